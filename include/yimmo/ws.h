/*
 * yimmo/ws.h: WebSocket (RFC 6455) with permessage-deflate (RFC 7692).
 *
 * The frame parser has no I/O and allocates nothing: it walks a buffer and
 * reports frame headers and payload spans (unmasked in place). The session
 * runs it on a connection after an HTTP upgrade.
 */
#ifndef YIMMO_WS_H
#define YIMMO_WS_H

#include "yimmo/core.h"

enum ymo_ws_opcode {
    YMO_WS_CONT = 0x0,
    YMO_WS_TEXT = 0x1,
    YMO_WS_BINARY = 0x2,
    YMO_WS_CLOSE = 0x8,
    YMO_WS_PING = 0x9,
    YMO_WS_PONG = 0xA
};

/* Close codes (RFC 6455 7.4.1). */
enum {
    YMO_WS_NORMAL = 1000,
    YMO_WS_GOING_AWAY = 1001,
    YMO_WS_PROTOCOL_ERROR = 1002,
    YMO_WS_UNSUPPORTED = 1003,
    YMO_WS_NO_STATUS = 1005,
    YMO_WS_ABNORMAL = 1006,
    YMO_WS_INVALID_DATA = 1007,
    YMO_WS_POLICY = 1008,
    YMO_WS_TOO_BIG = 1009,
    YMO_WS_INTERNAL = 1011
};

/* Incremental UTF-8 validation (RFC 3629), one byte at a time or in runs:
 * state 0 is "between characters". */
#define YMO_UTF8_ACCEPT 0u
#define YMO_UTF8_REJECT 12u
uint32_t ymo_utf8_validate(uint32_t state, const uint8_t *p, size_t n);

/* A frame header, as parsed. */
typedef struct {
    uint8_t fin, rsv, opcode, masked;
    uint8_t mask[4];
    uint64_t len;           /* payload length */
} ymo_ws_frame_t;

/* The frame parser: resumable over any split of the bytes. */
typedef struct {
    /* Settings. */
    uint64_t max_message;   /* assembled (decompressed) message size limit */
    uint8_t require_mask;   /* 1 for a server (client frames are masked) */
    uint8_t rsv_allowed;    /* RSV bits an extension negotiated (0x40: RSV1) */

    /* The frame in progress. */
    ymo_ws_frame_t frame;
    uint64_t left;          /* payload bytes still to come */
    uint32_t mask_pos;      /* position in the masking key */

    /* The message in progress (data frames). */
    uint8_t in_message;     /* a fragmented message is open */
    uint8_t msg_opcode;     /* its opcode (text or binary) */
    uint8_t msg_compressed; /* its first frame had RSV1 */
    uint64_t msg_len;       /* wire payload bytes of the message so far */
    uint32_t utf8;          /* validation state of a text message */

    /* Header bytes gathered across calls. */
    uint8_t hdr[14];
    uint8_t hdr_len;
    uint8_t state;
    int error;              /* close code to send; sticky */
    const char *reason;
} ymo_ws_parser_t;

void ymo_ws_parser_init(ymo_ws_parser_t *p, uint64_t max_message, int require_mask);

/* What one call to ymo_ws_parse() found. */
enum ymo_ws_event {
    YMO_WS_EV_NONE = 0,     /* needs more bytes */
    YMO_WS_EV_HEADER,       /* p->frame holds a new frame's header */
    YMO_WS_EV_PAYLOAD,      /* payload bytes of the current frame (unmasked) */
    YMO_WS_EV_FRAME_END,    /* the current frame ended */
    YMO_WS_EV_ERROR         /* p->error is the close code, p->reason why */
};

/*
 * Parse from buf[0..len). Returns the event; *consumed is the bytes used.
 * For YMO_WS_EV_PAYLOAD, buf[*data_off .. *data_off + *data_len) holds
 * payload, unmasked in place (buf is writable for that). Text payload of an
 * uncompressed message is UTF-8 checked as it arrives (RFC 6455 8.1).
 */
int ymo_ws_parse(ymo_ws_parser_t *p, uint8_t *buf, size_t len, size_t *consumed,
                 size_t *data_off, size_t *data_len);
/* The same, except that a YMO_WS_EV_PAYLOAD's bytes are unmasked into out
 * (room for the frame's remaining payload) instead of in place: one pass
 * instead of unmasking and then copying. out == NULL is ymo_ws_parse(). */
int ymo_ws_parse_to(ymo_ws_parser_t *p, uint8_t *buf, size_t len, size_t *consumed,
                    size_t *data_off, size_t *data_len, uint8_t *out);

/* Write a frame header (server side: unmasked) into out[14]; its length. */
size_t ymo_ws_frame_header(uint8_t *out, int fin, int rsv, int opcode, uint64_t len);

/* Check a close frame's payload (RFC 6455 5.5.1, 7.4): 0 with *code set
 * (1005 when empty), or the close code to answer a bad one with. */
int ymo_ws_check_close(const uint8_t *payload, size_t len, int *code);

/* The Sec-WebSocket-Accept value for a key (RFC 6455 4.2.2): 28 chars. */
int ymo_ws_accept_key(const char *key, size_t len, char out[29]);


/* --- permessage-deflate (RFC 7692) --------------------------------------- */

typedef struct ymo_ws_deflate_s ymo_ws_deflate_t;

/* Negotiated parameters. */
typedef struct {
    uint8_t server_no_context_takeover;
    uint8_t client_no_context_takeover;
    uint8_t server_max_window_bits;     /* 8..15; 15 when not negotiated */
    uint8_t client_max_window_bits;     /* 8..15 */
} ymo_ws_deflate_params_t;

/*
 * Answer a client's Sec-WebSocket-Extensions offer (RFC 7692 5, 7): pick
 * the first acceptable permessage-deflate offer, fill *params, and write
 * the response header value into out (NUL-terminated). Returns 1 when
 * accepted, 0 when there is no acceptable offer, YMO_E_* on a malformed
 * header (answer 400).
 */
int ymo_ws_deflate_negotiate(const char *offer, size_t len, ymo_ws_deflate_params_t *params,
                             char *out, size_t outlen);

/* zlib streams for one connection; NULL on out of memory. */
ymo_ws_deflate_t *ymo_ws_deflate_new(const ymo_ws_deflate_params_t *params);
void ymo_ws_deflate_free(ymo_ws_deflate_t *d);

/*
 * Inflate a whole received message payload (without the 00 00 ff ff tail,
 * which this adds, RFC 7692 7.2.2). The output goes to *out (malloc'd,
 * caller frees) and *outlen. At most max bytes are produced: more gives
 * YMO_WS_TOO_BIG (the compression-bomb case); corrupt data gives
 * YMO_WS_INVALID_DATA... (close 1007); 0 on success.
 */
int ymo_ws_inflate(ymo_ws_deflate_t *d, const uint8_t *in, size_t inlen, uint64_t max,
                   uint8_t **out, size_t *outlen);

/* Deflate a whole message to send (the tail removed, RFC 7692 7.2.1).
 * *out is malloc'd (caller frees). 0, or YMO_E_NOMEM. */
int ymo_ws_deflate(ymo_ws_deflate_t *d, const uint8_t *in, size_t inlen, uint8_t **out,
                   size_t *outlen);

/* --- The session on a connection ---------------------------------------- */

typedef struct {
    uint64_t max_message;       /* bytes, after inflating; over it: 1009 */
    double idle_timeout;        /* seconds without a frame before closing */
    double ping_interval;       /* seconds of quiet before the server pings; 0: never */
    double ping_timeout;        /* seconds to wait for the pong (or any frame) */
    size_t send_limit;          /* queued output bytes beyond which send fails */
    int deflate;                /* offer permessage-deflate */
} ymo_ws_config_t;

/* What a client's upgrade request says (RFC 6455 4.2.1). */
typedef struct {
    const char *key;            /* Sec-WebSocket-Key */
    size_t key_len;
    const char *protocols;      /* Sec-WebSocket-Protocol, or NULL */
    size_t protocols_len;
    /* permessage-deflate, negotiated from every Sec-WebSocket-Extensions
     * line: deflate is 1 when an offer is acceptable, with its parameters
     * and the answer for the 101 (ymo_ws_accept uses them if enabled). */
    int deflate;
    ymo_ws_deflate_params_t deflate_params;
    char deflate_answer[160];
    const char *refusal;        /* when refused: why, for the response body */
} ymo_ws_request_t;

/* Is the request on c a WebSocket handshake? 0 when it is one (req
 * filled), 1 when it is no upgrade to websocket at all, or the HTTP status
 * to refuse it with (req->refusal says why): 400 (a malformed
 * Sec-WebSocket-Extensions line among them), or 426 for a version other
 * than 13. */
int ymo_ws_check_request(ymo_conn_t *c, ymo_ws_request_t *req);

/* Accept: queue the 101 response (with subprotocol, when not NULL, and the
 * permessage-deflate answer, when negotiated) and switch c to WebSocket
 * once the exchange ends. user is the embedder's object for the hooks.
 * 0, or YMO_E_* (the connection is answered 400 / closed). */
int ymo_ws_accept(ymo_conn_t *c, const ymo_ws_request_t *req, const char *subprotocol,
                  size_t sp_len, const ymo_ws_config_t *cfg, void *user);

/* The embedder's object of a WebSocket connection. */
void *ymo_ws_user(ymo_conn_t *c);

/* Queue a message, or a fragment of one (fin = 0 for all but the last;
 * while a message is open, any data opcode continues it as YMO_WS_CONT).
 * Owned bytes: ref as in ymo_outq_ref, or NULL to copy. 0, YMO_E_CLOSED
 * after close, YMO_E_STATE for a misuse (YMO_WS_CONT with no message open,
 * or before the connection speaks WebSocket), YMO_E_NOMEM when more than
 * send_limit is queued. */
int ymo_ws_send(ymo_conn_t *c, int opcode, const void *data, size_t len, int fin, void *ref);
/* Queue a ping with len (<= 125) bytes of payload, also between fragments. */
int ymo_ws_ping(ymo_conn_t *c, const void *data, size_t len);

/* Start the closing handshake (RFC 6455 7.1.2) with code and reason. */
int ymo_ws_close(ymo_conn_t *c, int code, const char *reason, size_t len);

/* --- Blocking use from a worker thread that owns the connection ---------- */

typedef struct ymo_ws_s ymo_ws_t;

/* Accept and send the 101 now; *out is the session (free it). */
int ymo_ws_sync_accept(ymo_conn_t *c, const ymo_ws_request_t *req, const char *subprotocol,
                       size_t sp_len, const ymo_ws_config_t *cfg, ymo_ws_t **out);
/* Wait for the next message: 0 with it (data malloc'd, the caller frees),
 * 1 when the connection closed (ymo_ws_sync_code tells how). Pings are
 * answered and close frames echoed on the way. */
int ymo_ws_sync_recv(ymo_conn_t *c, ymo_ws_t *ws, int *opcode, uint8_t **data, size_t *len);
int ymo_ws_sync_send(ymo_conn_t *c, ymo_ws_t *ws, int opcode, const void *data, size_t len, int fin);
/* A ping with len (<= 125) bytes of payload, also between fragments. */
int ymo_ws_sync_ping(ymo_conn_t *c, ymo_ws_t *ws, const void *data, size_t len);
int ymo_ws_sync_close(ymo_conn_t *c, ymo_ws_t *ws, int code, const char *reason, size_t len);
int ymo_ws_sync_code(ymo_ws_t *ws, const char **reason, size_t *len);
void ymo_ws_sync_free(ymo_ws_t *ws);

#endif /* YIMMO_WS_H */
