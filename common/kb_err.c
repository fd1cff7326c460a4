/* kb_err: texts and names for the error table in kb_err.h. No state. */
#include "kb_err.h"

#include <string.h>

const char *kb_strerror(int code)
{
    if (code == 0)
        return "success";
    switch (code) {
#define KB__ERR_TEXT(name, val, text)                                          \
    case val: return text;
        KB_ERRNO_MAP(KB__ERR_TEXT)
#undef KB__ERR_TEXT
    default: break;
    }
    if (code < 0 && code > -4096)
        return strerror(-code);
    return "unknown error";
}

const char *kb_errname(int code)
{
    switch (code) {
    case 0: return "OK";
#define KB__ERR_NAME(name, val, text)                                          \
    case val: return "KB_E" #name;
        KB_ERRNO_MAP(KB__ERR_NAME)
#undef KB__ERR_NAME
    default: break;
    }
    if (code < 0 && code > -4096) {
        const char *n = strerrorname_np(-code);
        return n ? n : "ERRNO";
    }
    return "UNKNOWN";
}
