/*
 * yimmo/exchange.h: HTTP exchanges on a connection, for the embedder that
 * answers requests (the Python layer). All of these run on the loop thread,
 * from inside the server's on_request hook, unless noted.
 */
#ifndef YIMMO_EXCHANGE_H
#define YIMMO_EXCHANGE_H

#include "yimmo/core.h"

enum ymo_http_resp_flags {
    YMO_RESP_STARTED = 1u << 0,     /* status line queued */
    YMO_RESP_HEAD_DONE = 1u << 1,   /* header section queued */
    YMO_RESP_CHUNKED = 1u << 2,
    YMO_RESP_HAS_LENGTH = 1u << 3,  /* framed by Content-Length */
    YMO_RESP_NO_BODY = 1u << 4,     /* HEAD, 1xx, 204 or 304: body bytes dropped */
    YMO_RESP_CLOSE = 1u << 5,       /* the connection closes after this response */
    YMO_RESP_FINISHED = 1u << 6,
    YMO_RESP_APP_LENGTH = 1u << 7,  /* the application sent Content-Length */
    YMO_RESP_APP_DATE = 1u << 8,    /* ... Date: the server's is left out */
    YMO_RESP_APP_SERVER = 1u << 9   /* ... Server: the server's is left out */
};

typedef struct {
    int status;
    uint32_t flags;
    uint64_t content_length;
    uint64_t sent;          /* body bytes queued (none for HEAD, 204, 304) */
} ymo_http_response_t;

/* The parsed request head on c; spans are relative to *base. */
const ymo_http_parser_t *ymo_http_request(ymo_conn_t *c, const char **base);

/* The body: YMO_OK with the whole decoded body, YMO_AGAIN when the
 * request waits for 100-continue and its body has not been read yet, or
 * YMO_E_STATE for a body spooled to a file (ymo_http_body_stream reads it). */
int ymo_http_body(ymo_conn_t *c, const char **data, size_t *len);

/* Send 100 Continue if the client expects it, then read until the body is
 * complete. Blocks on this one connection: call it without locks that the
 * loop's other work needs. On error the connection has been answered (e.g.
 * 400, 413) or closed, and the exchange must not respond. */
int ymo_http_body_wait(ymo_conn_t *c);

/* Stream the body: *data gets up to max decoded bytes (valid until the next
 * call). Returns the count, 0 at the end of the body, or an error (the
 * connection has then been answered or closed). Sends 100 Continue and
 * blocks on this connection like ymo_http_body_wait() when nothing is
 * buffered. With handlers on the loop thread (no submit hook) the body was
 * read before the handler ran, beyond body_buffer_max into a spool file:
 * this then never waits on the network. */
ssize_t ymo_http_body_stream(ymo_conn_t *c, const char **data, size_t max);

/* Give back the last n bytes ymo_http_body_stream() handed out. */
void ymo_http_body_unread(ymo_conn_t *c, size_t n);

/* Check one response header field as ymo_http_response_header() would:
 * 0, YMO_E_BAD_HEADER_NAME or YMO_E_BAD_HEADER_VALUE. */
int ymo_http_check_field(const char *name, size_t nlen, const char *value, size_t vlen);

/* The response being written on c. */
ymo_http_response_t *ymo_http_response(ymo_conn_t *c);

/* True when a comma-separated header value holds token (case-insensitive,
 * RFC 9110 5.6.1 lists). */
int ymo_http_has_token(const char *value, size_t len, const char *token);

/* Queue the status line, with the standard reason phrase. */
int ymo_http_response_begin(ymo_conn_t *c, int status);
/* Queue the status line with the caller's reason phrase (checked: no CR,
 * LF or NUL; YMO_E_BAD_HEADER_VALUE otherwise). */
int ymo_http_response_begin_reason(ymo_conn_t *c, int status, const char *reason, size_t len);
/* Queue one header field; names must be tokens, values must not hold CR,
 * LF or NUL (RFC 9110 5.5). Connection and Transfer-Encoding belong to the
 * server: "Connection: close" is honoured, Transfer-Encoding refused. */
int ymo_http_response_header(ymo_conn_t *c, const char *name, size_t nlen,
                             const char *value, size_t vlen);
/* Finish the header section. known_len >= 0 is the whole body's length
 * (Content-Length is added unless the application gave one); < 0 means the
 * body streams: chunked on HTTP/1.1, close-delimited on HTTP/1.0. */
int ymo_http_response_end_head(ymo_conn_t *c, int64_t known_len);
/* Queue body bytes. With ref != NULL the bytes are referenced and the
 * release hook gets ref once written; otherwise they are copied. The
 * release hook also gets ref when the bytes are not needed (HEAD). */
int ymo_http_response_body(ymo_conn_t *c, const char *data, size_t len, void *ref);
/* Queue len bytes of the file fd from off, sent with sendfile(); the
 * response owns fd from here (closed once sent or dropped). */
int ymo_http_response_file(ymo_conn_t *c, int fd, uint64_t off, size_t len);
/* End the response (the last chunk, or a check of Content-Length). */
int ymo_http_response_finish(ymo_conn_t *c);

/* Answer with a short plain-text error and close the connection. */
int ymo_http_respond_error(ymo_conn_t *c, int status, const char *reason);

/* The embedder's object for the running exchange. */
void ymo_http_set_exchange(ymo_conn_t *c, void *exchange);
void *ymo_http_exchange(ymo_conn_t *c);

/* The exchange switched protocols (its 101 response is queued): when it
 * ends, the connection runs proto with data, and the bytes after the
 * request go to it. */
void ymo_http_upgrade(ymo_conn_t *c, const ymo_proto_t *proto, void *data);

/* The request is done with c->in: the bytes behind it move to the front
 * for another protocol read by the same exchange (a WebSocket a worker
 * thread drives). The request's spans are invalid from here. */
void ymo_http_release_input(ymo_conn_t *c);

/* From on_request or resume: the exchange is not finished, but waits for
 * its output to drain (a producer paused at the high-water mark); the
 * resume hook is called when it has, or when the connection closed. */
void ymo_http_suspend(ymo_conn_t *c);

#endif /* YIMMO_EXCHANGE_H */
