/*
 * yimmo/http.h: the HTTP/1.x request parser (RFC 9112), with no I/O.
 *
 * The parser is a resumable state machine over a byte buffer. It allocates
 * nothing: results are spans (offset, length) relative to the first byte of
 * the request, so the caller may move or grow its buffer between calls as
 * long as the request keeps its first byte at the start of what it passes.
 * Header names are lowercased in place while they are scanned.
 */
#ifndef YIMMO_HTTP_H
#define YIMMO_HTTP_H

#include "yimmo/yimmo.h"

/* A run of bytes inside the buffer a parser was given. */
typedef struct {
    uint32_t off;
    uint32_t len;
} ymo_span_t;

/* Header fields the engine acts on, recognised while parsing. */
enum ymo_http_header_id {
    YMO_HDR_OTHER = 0,
    YMO_HDR_HOST,
    YMO_HDR_CONTENT_LENGTH,
    YMO_HDR_TRANSFER_ENCODING,
    YMO_HDR_CONNECTION,
    YMO_HDR_EXPECT,
    YMO_HDR_UPGRADE,
    YMO_HDR_CONTENT_TYPE,
    YMO_HDR__COUNT
};

typedef struct {
    ymo_span_t name;    /* lowercased */
    ymo_span_t value;   /* without leading and trailing whitespace */
    uint32_t id;        /* enum ymo_http_header_id */
} ymo_http_header_t;

/* Every limit a peer could push against; all settable at run time. */
typedef struct {
    uint32_t max_request_line;  /* bytes, method to CRLF; over it: 414 */
    uint32_t max_field_size;    /* bytes of one header line; over it: 431 */
    uint32_t max_header_bytes;  /* bytes of the whole head; over it: 431 */
    uint32_t max_headers;       /* header fields; over it: 431 */
    uint64_t max_body;          /* decoded body bytes; over it: 413 */
} ymo_http_limits_t;

#define YMO_HTTP_DEFAULT_MAX_REQUEST_LINE 8192u
#define YMO_HTTP_DEFAULT_MAX_FIELD_SIZE 8192u
#define YMO_HTTP_DEFAULT_MAX_HEADER_BYTES 65536u
#define YMO_HTTP_DEFAULT_MAX_HEADERS 100u
#define YMO_HTTP_DEFAULT_MAX_BODY (100ull * 1024 * 1024)

/* Flags describing a parsed head (ymo_http_parser_t.flags). */
enum ymo_http_flags {
    YMO_HTTP_F_KEEPALIVE = 1u << 0,       /* connection persists (RFC 9112 9.3) */
    YMO_HTTP_F_CHUNKED = 1u << 1,         /* body is chunked */
    YMO_HTTP_F_CONTENT_LENGTH = 1u << 2,  /* body length is content_length */
    YMO_HTTP_F_EXPECT_CONTINUE = 1u << 3, /* Expect: 100-continue */
    YMO_HTTP_F_UPGRADE = 1u << 4,         /* Connection: upgrade with Upgrade */
    YMO_HTTP_F_HEAD = 1u << 5,            /* method is HEAD */
    YMO_HTTP_F_HAS_QUERY = 1u << 6,       /* target had a '?' */
    YMO_HTTP_F_CONNECT = 1u << 7          /* method is CONNECT */
};

typedef struct {
    /* Set by ymo_http_parser_init(). */
    const ymo_http_limits_t *limits;
    ymo_http_header_t *headers;     /* caller storage, limits->max_headers long */

    /* Results, valid once ymo_http_parse_head() returned YMO_OK. */
    ymo_span_t method;
    ymo_span_t target;              /* the request-target as sent */
    ymo_span_t path;                /* origin-form path (or the target) */
    ymo_span_t query;               /* after '?', without it */
    uint8_t version_major;
    uint8_t version_minor;
    uint32_t nheaders;
    uint32_t flags;                 /* enum ymo_http_flags */
    uint64_t content_length;        /* with YMO_HTTP_F_CONTENT_LENGTH */
    uint32_t head_len;              /* bytes from method to the empty line */

    /* Sticky error: once set, every call returns it. */
    int error;

    /* Internal state; callers must not touch it. */
    uint32_t state;
    uint32_t pos;                   /* bytes of the head scanned so far */
    uint32_t mark;                  /* start of the token being scanned */
    uint32_t line_start;
    uint32_t aux;
    uint32_t seen;                  /* header ids seen (bit per id) */
    uint64_t body_left;             /* bytes left in this chunk / body */
    uint64_t body_total;            /* decoded body bytes so far */
    uint32_t body_state;
    uint32_t body_aux;
} ymo_http_parser_t;

/* Prepare p for a new request; headers must hold limits->max_headers. */
void ymo_http_parser_init(ymo_http_parser_t *p, const ymo_http_limits_t *limits,
                          ymo_http_header_t *headers);

/* Set default limits. */
void ymo_http_limits_default(ymo_http_limits_t *limits);

/*
 * Parse the request head in buf[0..len), where buf[0] is the first byte of
 * the request. Only bytes after those already scanned are looked at. Returns
 * YMO_OK when the head is complete (p->head_len is set), YMO_AGAIN when more
 * bytes are needed, or a YMO_E* error (sticky). Header names are lowercased
 * in place.
 */
int ymo_http_parse_head(ymo_http_parser_t *p, char *buf, size_t len);

/*
 * Decode body framing from buf[0..len), the bytes that follow what earlier
 * calls consumed. Sets *consumed to the bytes used and yields at most one run
 * of body data as buf[*data_off .. *data_off + *data_len). Returns YMO_OK when
 * the body is complete (chunked trailers included), YMO_AGAIN when it needs
 * more bytes, or a YMO_E* error (sticky). A request without a body is complete
 * at once.
 */
int ymo_http_parse_body(ymo_http_parser_t *p, const char *buf, size_t len,
                        size_t *consumed, size_t *data_off, size_t *data_len);

/* The HTTP status a parse error is answered with (400, 413, 414, 431, 501, 505). */
int ymo_http_error_status(int err);

/* The reason phrase for a status code ("Not Found"), or "Unknown". */
const char *ymo_http_reason(int status);

#endif /* YIMMO_HTTP_H */
