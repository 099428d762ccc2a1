/*
 * status.c -- the lower layer's error reports and hooks.
 *
 * A failing function records a message (and errno) for the calling thread and
 * returns a negative enum pw_status; the binding layer turns it into an
 * exception in one place (bind/errors.c), the C tests print it.
 */
#include "pw.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

struct pw_hooks pw_hooks; /* all NULL: no interpreter to let run */

static _Thread_local char last_msg[512];
static _Thread_local int last_errno;

int pw_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_msg, sizeof last_msg, fmt, ap);
    va_end(ap);
    return code;
}

int pw_fail_errno(int err)
{
    last_errno = err;
    snprintf(last_msg, sizeof last_msg, "%s", strerror(err));
    return PW_ESYS;
}

const char *pw_last_error(void) { return last_msg; }
int pw_last_errno(void) { return last_errno; }
