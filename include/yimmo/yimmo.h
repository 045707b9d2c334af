/*
 * yimmo: the C API shared by the engine's layers and by embedders.
 *
 * Every function that can fail returns an int: 0 on success, a negative
 * errno value for a failed system call, or a negative YMO_E* code for a
 * protocol error. YMO_AGAIN ("need more bytes") is its own code, not an
 * error.
 */
#ifndef YIMMO_YIMMO_H
#define YIMMO_YIMMO_H

#include <stddef.h>
#include <stdint.h>

#define YMO_VERSION "0.1.0"

/* Codes above YMO__ERRNO_MAX are -errno values; below it, yimmo's own. */
#define YMO__ERRNO_MAX (-4095)

enum ymo_err {
    YMO_OK = 0,
    YMO_AGAIN = -4096,          /* need more bytes; not an error */

    /* Request line. */
    YMO_E_BAD_METHOD = -4200,
    YMO_E_BAD_TARGET,
    YMO_E_BAD_VERSION,
    YMO_E_VERSION_UNSUPPORTED,  /* 505 */
    YMO_E_REQUEST_LINE_TOO_LONG,/* 414 */
    YMO_E_METHOD_TOO_LONG,      /* 501: longer than the request line may be */

    /* Header section. */
    YMO_E_BAD_HEADER_NAME,
    YMO_E_BAD_HEADER_VALUE,
    YMO_E_SPACE_BEFORE_COLON,
    YMO_E_OBS_FOLD,
    YMO_E_BARE_CR,
    YMO_E_BARE_LF,              /* LF without CR; strict RFC 9112 2.2 */
    YMO_E_HEADER_FIELD_TOO_LARGE,  /* 431 */
    YMO_E_HEADERS_TOO_LARGE,       /* 431 */
    YMO_E_TOO_MANY_HEADERS,        /* 431 */
    YMO_E_MISSING_HOST,
    YMO_E_DUPLICATE_HOST,
    YMO_E_BAD_HOST,

    /* Message framing (RFC 9112 section 6). */
    YMO_E_BAD_CONTENT_LENGTH,
    YMO_E_DUPLICATE_CONTENT_LENGTH,
    YMO_E_CONTENT_LENGTH_AND_CHUNKED,
    YMO_E_BAD_TRANSFER_ENCODING,
    YMO_E_UNKNOWN_TRANSFER_CODING, /* 501 */
    YMO_E_BODY_TOO_LARGE,          /* 413 */

    /* Chunked body (RFC 9112 section 7.1). */
    YMO_E_BAD_CHUNK_SIZE,
    YMO_E_CHUNK_SIZE_OVERFLOW,
    YMO_E_BAD_CHUNK_EXTENSION,
    YMO_E_BAD_CHUNK_DATA,
    YMO_E_BAD_TRAILER,

    /* Engine. */
    YMO_E_NOMEM,
    YMO_E_CLOSED,
    YMO_E_TIMEOUT,
    YMO_E_STATE,

    /* TLS. */
    YMO_E_TLS_CONFIG,              /* a certificate, key or setting that does not load */
    YMO_E_TLS,                     /* the handshake or a record failed */
    YMO_E_TLS_PLAINTEXT,           /* plain HTTP sent to a TLS port */

    YMO_E__LAST
};

/* A short reason for any code this API returns, including -errno values. */
const char *ymo_strerror(int err);

/* The name of a code ("YMO_E_BAD_METHOD"), or "errno" for -errno values. */
const char *ymo_errname(int err);

#endif /* YIMMO_YIMMO_H */
