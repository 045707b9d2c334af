/*
 * Names and reasons for yimmo's error codes.
 */
#include "yimmo/yimmo.h"

#include <string.h>

#define ERR_BASE YMO_E_BAD_METHOD
#define ERR_COUNT (YMO_E__LAST - YMO_E_BAD_METHOD)

typedef struct {
    const char *name;
    const char *reason;
} err_info;

#define E(code, reason) [code - ERR_BASE] = {#code, reason}

/* Designated entries keep this right when codes are added to the enum. */
static const err_info errors[ERR_COUNT] = {
    E(YMO_E_BAD_METHOD, "invalid method"),
    E(YMO_E_BAD_TARGET, "invalid request target"),
    E(YMO_E_BAD_VERSION, "invalid HTTP version"),
    E(YMO_E_VERSION_UNSUPPORTED, "HTTP version not supported"),
    E(YMO_E_REQUEST_LINE_TOO_LONG, "request line too long"),
    E(YMO_E_METHOD_TOO_LONG, "method too long"),
    E(YMO_E_BAD_HEADER_NAME, "invalid header field name"),
    E(YMO_E_BAD_HEADER_VALUE, "invalid header field value"),
    E(YMO_E_SPACE_BEFORE_COLON, "whitespace between header field name and colon"),
    E(YMO_E_OBS_FOLD, "obsolete line folding in header section"),
    E(YMO_E_BARE_CR, "CR not followed by LF"),
    E(YMO_E_BARE_LF, "LF not preceded by CR"),
    E(YMO_E_HEADER_FIELD_TOO_LARGE, "header field too large"),
    E(YMO_E_HEADERS_TOO_LARGE, "header section too large"),
    E(YMO_E_TOO_MANY_HEADERS, "too many header fields"),
    E(YMO_E_MISSING_HOST, "missing Host header field"),
    E(YMO_E_DUPLICATE_HOST, "more than one Host header field"),
    E(YMO_E_BAD_HOST, "invalid Host header field value"),
    E(YMO_E_BAD_CONTENT_LENGTH, "invalid Content-Length"),
    E(YMO_E_DUPLICATE_CONTENT_LENGTH, "more than one Content-Length"),
    E(YMO_E_CONTENT_LENGTH_AND_CHUNKED, "both Content-Length and Transfer-Encoding"),
    E(YMO_E_BAD_TRANSFER_ENCODING, "invalid Transfer-Encoding"),
    E(YMO_E_UNKNOWN_TRANSFER_CODING, "unsupported transfer coding"),
    E(YMO_E_BODY_TOO_LARGE, "request body too large"),
    E(YMO_E_BAD_CHUNK_SIZE, "invalid chunk size"),
    E(YMO_E_CHUNK_SIZE_OVERFLOW, "chunk size overflow"),
    E(YMO_E_BAD_CHUNK_EXTENSION, "invalid chunk extension"),
    E(YMO_E_BAD_CHUNK_DATA, "chunk data not followed by CRLF"),
    E(YMO_E_BAD_TRAILER, "invalid trailer section"),
    E(YMO_E_NOMEM, "out of memory"),
    E(YMO_E_CLOSED, "connection closed"),
    E(YMO_E_TIMEOUT, "timed out"),
    E(YMO_E_STATE, "operation not valid in this state"),
    E(YMO_E_TLS_CONFIG, "invalid TLS configuration"),
    E(YMO_E_TLS, "TLS handshake or record failed"),
    E(YMO_E_TLS_PLAINTEXT, "plain HTTP sent to a TLS port"),
};

static const err_info *lookup(int err)
{
    if (err >= ERR_BASE && err < YMO_E__LAST && errors[err - ERR_BASE].name != NULL)
        return &errors[err - ERR_BASE];
    return NULL;
}

const char *ymo_strerror(int err)
{
    if (err == YMO_OK)
        return "success";
    if (err == YMO_AGAIN)
        return "incomplete request";
    const err_info *e = lookup(err);
    if (e != NULL)
        return e->reason;
    /* Codes above YMO__ERRNO_MAX are -errno from a system call. */
    if (err < 0 && err > YMO__ERRNO_MAX)
        return strerror(-err);
    return "unknown error";
}

const char *ymo_errname(int err)
{
    if (err == YMO_OK)
        return "YMO_OK";
    if (err == YMO_AGAIN)
        return "YMO_AGAIN";
    const err_info *e = lookup(err);
    if (e != NULL)
        return e->name;
    if (err < 0 && err > YMO__ERRNO_MAX)
        return "errno";
    return "YMO_E_UNKNOWN";
}
