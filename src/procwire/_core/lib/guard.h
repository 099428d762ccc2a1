/*
 * guard.h -- the SIGBUS guard of named segments' mappings (guard.c).
 */
#ifndef PROCWIRE_GUARD_H
#define PROCWIRE_GUARD_H

#include <stddef.h>

/* Repairs SIGBUS faults in [buf, buf+size), a mapping of the named segment
 * whose file is fd, instead of dying. Returns a token, or NULL (PW_ESYS). */
void *pw_guard_add(void *buf, size_t size, int fd);
/* Stops guarding; 1 if a truncation was repaired. */
int pw_guard_remove(void *token);
/* 1 once a truncation was repaired in it. */
int pw_guard_lost(void *token);

#endif
