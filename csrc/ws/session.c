/*
 * WebSocket on a connection: the handshake (RFC 6455 4.2), messages
 * assembled from frames and handed to the embedder one at a time, control
 * frames answered (ping with pong, close with close), and the closing
 * handshake. The frame parser runs over the connection's input buffer.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "core/core_internal.h"
#include "yimmo/exchange.h"
#include "yimmo/ws.h"

enum {
    WF_CLOSE_SENT = 1u << 0,
    WF_CLOSE_RECEIVED = 1u << 1,
    WF_NOTIFIED = 1u << 2,      /* the embedder got ws_close */
    WF_CLOSE_PENDING = 1u << 3, /* ws_close is due */
    WF_MSG_READY = 1u << 4,     /* a message waits for the embedder */
    WF_SENDING = 1u << 5,       /* a fragmented message is being sent */
    WF_FAILED = 1u << 6,        /* we closed because the peer misbehaved */
    WF_PING_OUT = 1u << 7,      /* our keep-alive ping waits for an answer */
    WF_OPEN_PENDING = 1u << 8,  /* ws_open is due, once HTTP has handed over */
    WF_PONG_DUE = 1u << 9       /* pong[] answers the last ping, once output drains */
};

struct ymo_ws_s {
    ymo_ws_parser_t parser;
    ymo_ws_config_t cfg;
    ymo_ws_deflate_t *deflate;
    uint32_t flags;
    size_t scan;                /* bytes of c->in already parsed */
    ymo_buf_t msg;              /* the data message being assembled */
    uint8_t ctrl[125];          /* the control frame being read */
    size_t ctrl_len;
    uint8_t pong[125];          /* the answer held back (WF_PONG_DUE) */
    size_t pong_len;
    int ready_opcode;
    int close_code;
    char close_reason[124];
    size_t close_reason_len;
    void *user;
    double last_rx;             /* loop time of the last bytes from the peer */
    double sync_rx, ping_sent;  /* blocking use, monotonic: the same, and when
                                 * our keep-alive ping left */
};
typedef struct ymo_ws_s ws_t;

#define WS(c) ((ws_t *)(c)->proto_data)

/* Seconds our close frame, once sent, waits for the peer's (RFC 6455 7.1.1). */
#define CLOSE_WAIT 5.0

static void ws_process(ymo_conn_t *c, ws_t *ws);

/* The one timer: the next of the idle deadline, the keep-alive ping, and
 * the wait for its answer. While a write waits for the peer, the timer is
 * the send timeout its flush set, and stays so. */
static void arm(ymo_conn_t *c, ws_t *ws)
{
    if ((c->flags & YMO_CONN_SEND_TIMER) && c->out.bytes > 0)
        return;
    double t = ws->cfg.idle_timeout;
    if (ws->flags & WF_PING_OUT) {
        /* The answer's deadline, unless the idle one comes first. */
        double idle = t - (ev_now(c->server->loop) - ws->last_rx);
        t = ws->cfg.ping_timeout;
        if (ws->cfg.idle_timeout > 0 && idle < t)
            t = idle > 0.001 ? idle : 0.001;
    } else if (ws->cfg.ping_interval > 0 && (t <= 0 || ws->cfg.ping_interval < t)) {
        t = ws->cfg.ping_interval;
    }
    ymo_conn_timer(c, t);
}

/* --- Handshake ------------------------------------------------------------ */

static const ymo_http_header_t *find(const ymo_http_parser_t *p, const char *base, const char *name,
                                     int *count)
{
    const ymo_http_header_t *found = NULL;
    size_t n = strlen(name);
    *count = 0;
    for (uint32_t i = 0; i < p->nheaders; i++) {
        const ymo_http_header_t *h = &p->headers[i];
        if (h->name.len == n && memcmp(base + h->name.off, name, n) == 0) {
            if (found == NULL)
                found = h;
            (*count)++;
        }
    }
    return found;
}


static int negotiate(ymo_conn_t *c, ymo_ws_deflate_params_t *params, char *ext, size_t extlen);

int ymo_ws_check_request(ymo_conn_t *c, ymo_ws_request_t *req)
{
    const char *base;
    const ymo_http_parser_t *p = ymo_http_request(c, &base);
    int n;
    const ymo_http_header_t *up = find(p, base, "upgrade", &n);
    if (up == NULL || !ymo_http_has_token(base + up->value.off, up->value.len, "websocket"))
        return 1;
    memset(req, 0, sizeof(*req));
    /* RFC 6455 4.2.1: GET, HTTP/1.1, Connection: Upgrade, a 16-byte key. */
    req->refusal = "a WebSocket handshake is a GET over HTTP/1.1 with Connection: Upgrade";
    if (p->method.len != 3 || memcmp(base + p->method.off, "GET", 3) != 0
        || p->version_minor < 1 || !(p->flags & YMO_HTTP_F_UPGRADE))
        return 400;
    req->refusal = "Sec-WebSocket-Version: 13 only";
    const ymo_http_header_t *ver = find(p, base, "sec-websocket-version", &n);
    if (ver == NULL || n != 1 || ver->value.len != 2 || memcmp(base + ver->value.off, "13", 2) != 0)
        return 426;
    req->refusal = "malformed Sec-WebSocket-Key";
    const ymo_http_header_t *key = find(p, base, "sec-websocket-key", &n);
    if (key == NULL || n != 1 || key->value.len != 24 || base[key->value.off + 22] != '='
        || base[key->value.off + 23] != '=')
        return 400;
    for (uint32_t i = 0; i < 22; i++) {
        char ch = base[key->value.off + i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9')
              || ch == '+' || ch == '/'))
            return 400;
    }
    req->key = base + key->value.off;
    req->key_len = key->value.len;
    const ymo_http_header_t *proto = find(p, base, "sec-websocket-protocol", &n);
    if (proto != NULL) {
        req->protocols = base + proto->value.off;
        req->protocols_len = proto->value.len;
    }
    /* Every extensions line must parse (RFC 6455 4.2.1: 400 for any
     * violation of the handshake's grammar), before the application is
     * asked; the negotiation is kept for ymo_ws_accept. */
    req->refusal = "malformed Sec-WebSocket-Extensions";
    req->deflate = negotiate(c, &req->deflate_params, req->deflate_answer,
                             sizeof(req->deflate_answer));
    if (req->deflate < 0)
        return 400;
    req->refusal = NULL;
    return 0;
}

/* permessage-deflate from every Sec-WebSocket-Extensions line, in order, as
 * one list (the field may appear more than once, RFC 6455 11.3.2): the first
 * acceptable offer wins and every line must parse. 1, 0 or YMO_E_*. */
static int negotiate(ymo_conn_t *c, ymo_ws_deflate_params_t *params, char *ext, size_t extlen)
{
    const char *base;
    const ymo_http_parser_t *p = ymo_http_request(c, &base);
    ymo_ws_deflate_params_t later;
    char later_ext[160];
    int accepted = 0;
    for (uint32_t i = 0; i < p->nheaders; i++) {
        const ymo_http_header_t *h = &p->headers[i];
        if (h->name.len != 24 || memcmp(base + h->name.off, "sec-websocket-extensions", 24) != 0)
            continue;
        /* Lines after the accepted one are only checked. */
        int r = accepted ? ymo_ws_deflate_negotiate(base + h->value.off, h->value.len, &later,
                                                    later_ext, sizeof(later_ext))
                         : ymo_ws_deflate_negotiate(base + h->value.off, h->value.len, params,
                                                    ext, extlen);
        if (r < 0)
            return r;
        accepted |= r;
    }
    return accepted;
}

int ymo_ws_accept_key(const char *key, size_t len, char out[29])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char buf[64 + sizeof(guid)];
    unsigned char digest[SHA_DIGEST_LENGTH];
    if (len > 64)
        return YMO_E_STATE;
    memcpy(buf, key, len);
    memcpy(buf + len, guid, sizeof(guid) - 1);
    SHA1(buf, len + sizeof(guid) - 1, digest);
    EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH);
    out[28] = '\0';
    return 0;
}

extern const ymo_proto_t ymo__ws_proto;

/* The session, with the 101 response queued. */
static int start(ymo_conn_t *c, const ymo_ws_request_t *req, const char *subprotocol, size_t sp_len,
                 const ymo_ws_config_t *cfg, void *user, ws_t **out)
{
    char accept[29];
    int deflate = cfg->deflate && req->deflate == 1;
    if (ymo_ws_accept_key(req->key, req->key_len, accept) < 0)
        return YMO_E_STATE;
    for (size_t i = 0; i < sp_len; i++)
        if (subprotocol[i] == '\r' || subprotocol[i] == '\n' || subprotocol[i] == '\0')
            return YMO_E_BAD_HEADER_VALUE;

    ws_t *ws = calloc(1, sizeof(*ws));
    if (ws == NULL)
        return YMO_E_NOMEM;
    ws->cfg = *cfg;
    ws->user = user;
    ws->flags = WF_OPEN_PENDING;
    ymo_ws_parser_init(&ws->parser, cfg->max_message, 1);
    if (deflate) {
        ws->deflate = ymo_ws_deflate_new(&req->deflate_params);
        if (ws->deflate == NULL) {
            free(ws);
            return YMO_E_NOMEM;
        }
        ws->parser.rsv_allowed = 0x40;
    }

    static const char head[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                               "Connection: Upgrade\r\nSec-WebSocket-Accept: ";
    int r = ymo_outq_copy(&c->out, head, sizeof(head) - 1);
    if (r == 0)
        r = ymo_outq_copy(&c->out, accept, 28);
    if (r == 0 && sp_len > 0) {
        r = ymo_outq_copy(&c->out, "\r\nSec-WebSocket-Protocol: ", 26);
        if (r == 0)
            r = ymo_outq_copy(&c->out, subprotocol, sp_len);
    }
    if (r == 0 && deflate) {
        r = ymo_outq_copy(&c->out, "\r\nSec-WebSocket-Extensions: ", 28);
        if (r == 0)
            r = ymo_outq_copy(&c->out, req->deflate_answer, strlen(req->deflate_answer));
    }
    if (r == 0)
        r = ymo_outq_copy(&c->out, "\r\n\r\n", 4);
    if (r < 0) {
        ymo_ws_deflate_free(ws->deflate);
        free(ws);
        return r;
    }
    *out = ws;
    return 0;
}

int ymo_ws_accept(ymo_conn_t *c, const ymo_ws_request_t *req, const char *subprotocol,
                  size_t sp_len, const ymo_ws_config_t *cfg, void *user)
{
    ws_t *ws;
    int r = start(c, req, subprotocol, sp_len, cfg, user, &ws);
    if (r == 0)
        ymo_http_upgrade(c, &ymo__ws_proto, ws);
    return r;
}

void *ymo_ws_user(ymo_conn_t *c)
{
    return WS(c)->user;
}

/* --- Sending --------------------------------------------------------------- */

static int send_frame(ymo_conn_t *c, int fin, int rsv, int opcode, const void *data, size_t len,
                      void *ref)
{
    uint8_t hdr[14];
    size_t hl = ymo_ws_frame_header(hdr, fin, rsv, opcode, len);
    int r = ymo_outq_copy(&c->out, hdr, hl);
    if (r < 0) {
        if (ref != NULL)
            c->server->hooks.release(c->server, ref);
        return r;
    }
    if (len == 0) {
        if (ref != NULL)
            c->server->hooks.release(c->server, ref);
        return 0;
    }
    if (ref == NULL || len <= 8192) {
        r = ymo_outq_copy(&c->out, data, len);
        if (ref != NULL)
            c->server->hooks.release(c->server, ref);
        return r;
    }
    return ymo_outq_ref(&c->out, data, len, ref);
}

static int send_msg(ymo_conn_t *c, ws_t *ws, int opcode, const void *data, size_t len, int fin,
                    void *ref)
{
    int r = 0;
    if ((ws->flags & WF_CLOSE_SENT) || (c->flags & YMO_CONN_CLOSED)) {
        r = YMO_E_CLOSED;
        goto drop;
    }
    /* While a fragmented message is open, what comes is more of it. */
    if ((ws->flags & WF_SENDING) && opcode != YMO_WS_CONT)
        opcode = YMO_WS_CONT;
    if ((opcode == YMO_WS_CONT) != ((ws->flags & WF_SENDING) != 0)) {
        r = YMO_E_STATE;
        goto drop;
    }
    if (ws->cfg.send_limit && c->out.bytes + len > ws->cfg.send_limit) {
        r = YMO_E_NOMEM;
        goto drop;
    }
    if (fin)
        ws->flags &= ~WF_SENDING;
    else
        ws->flags |= WF_SENDING;
    if (ws->deflate != NULL && fin && opcode != YMO_WS_CONT) {
        /* Whole messages are compressed; fragments go as they are. */
        uint8_t *z;
        size_t zlen;
        if (ymo_ws_deflate(ws->deflate, data, len, &z, &zlen) == 0) {
            r = send_frame(c, 1, 0x40, opcode, z, zlen, NULL);
            free(z);
            if (ref != NULL)
                c->server->hooks.release(c->server, ref);
            return r;
        }
    }
    return send_frame(c, fin, 0, opcode, data, len, ref);
drop:
    if (ref != NULL)
        c->server->hooks.release(c->server, ref);
    return r;
}

static void queue_close(ymo_conn_t *c, ws_t *ws, int code, const char *reason, size_t len)
{
    if (ws->flags & WF_CLOSE_SENT)
        return;
    ws->flags |= WF_CLOSE_SENT;
    c->flags &= ~YMO_CONN_STOP_WAKES;   /* goodbye said: wait for the peer's */
    uint8_t payload[125];
    size_t n = 0;
    if (code != YMO_WS_NO_STATUS && code != 0) {
        payload[0] = (uint8_t)(code >> 8);
        payload[1] = (uint8_t)code;
        if (len > 123)
            len = 123;
        memcpy(payload + 2, reason, len);
        n = 2 + len;
    }
    send_frame(c, 1, 0, YMO_WS_CLOSE, payload, n, NULL);
}

/* Tell the embedder, once, that the connection is closing. */
static void notify_close(ymo_conn_t *c, ws_t *ws, int code, const char *reason, size_t len)
{
    if (ws->flags & (WF_NOTIFIED | WF_CLOSE_PENDING))
        return;
    ws->close_code = code;
    if (len > sizeof(ws->close_reason))
        len = sizeof(ws->close_reason);
    memcpy(ws->close_reason, reason, len);
    ws->close_reason_len = len;
    ws->flags |= WF_CLOSE_PENDING;
    ymo_conn_make_ready(c);
}

/* The peer broke a rule: close with code (RFC 6455 7.1.7). */
static void fail(ymo_conn_t *c, ws_t *ws, int code, const char *reason)
{
    ymo__log(c->server, YMO_LOG_INFO, "websocket closed with %d: %s", code, reason);
    ws->flags |= WF_FAILED;
    queue_close(c, ws, code, reason, strlen(reason));
    notify_close(c, ws, code, reason, strlen(reason));
    ymo_conn_close_after_flush(c);
}

/* Until the exchange that upgraded ends, c still runs HTTP: its
 * proto_data is not ours yet. */
#define SPEAKS_WS(c) ((c)->proto == &ymo__ws_proto)

int ymo_ws_send(ymo_conn_t *c, int opcode, const void *data, size_t len, int fin, void *ref)
{
    if (!SPEAKS_WS(c)) {
        if (ref != NULL)
            c->server->hooks.release(c->server, ref);
        return YMO_E_STATE;
    }
    return send_msg(c, WS(c), opcode, data, len, fin, ref);
}

int ymo_ws_ping(ymo_conn_t *c, const void *data, size_t len)
{
    if (c->flags & YMO_CONN_CLOSED)
        return YMO_E_CLOSED;
    if (!SPEAKS_WS(c))
        return YMO_E_STATE;
    if (WS(c)->flags & WF_CLOSE_SENT)
        return YMO_E_CLOSED;
    /* Control frames may go between the fragments of a message. */
    return send_frame(c, 1, 0, YMO_WS_PING, data, len, NULL);
}

int ymo_ws_close(ymo_conn_t *c, int code, const char *reason, size_t len)
{
    if (c->flags & YMO_CONN_CLOSED)
        return YMO_E_CLOSED;
    if (!SPEAKS_WS(c))
        return YMO_E_STATE;
    ws_t *ws = WS(c);
    queue_close(c, ws, code, reason, len);
    if (ws->flags & WF_CLOSE_RECEIVED) {
        ymo_conn_close_after_flush(c);
    } else {
        /* Wait (a while) for the peer's close frame. */
        ymo_conn_timer(c, CLOSE_WAIT);
    }
    return 0;
}

/* --- Receiving ------------------------------------------------------------- */

static int msg_reserve(ws_t *ws, size_t n)
{
    if (ws->msg.cap - ws->msg.len >= n)
        return 0;
    size_t ncap = ws->msg.cap ? ws->msg.cap : 256;
    while (ncap - ws->msg.len < n)
        ncap *= 2;
    char *nd = realloc(ws->msg.data, ncap);
    if (nd == NULL)
        return YMO_E_NOMEM;
    ws->msg.data = nd;
    ws->msg.cap = ncap;
    return 0;
}

/* A control frame arrived whole. */
static void control(ymo_conn_t *c, ws_t *ws, int opcode)
{
    if (opcode == YMO_WS_PING) {
        /* RFC 6455 5.5.2: answer with the same payload, unless closing.
         * A peer that pings without reading would have its pongs queue
         * without end: past the high-water mark only the last ping is
         * answered, once output drains (RFC 6455 5.5.3 allows it). */
        if (ws->flags & WF_CLOSE_SENT)
            return;
        if (c->out.bytes >= c->server->cfg.output_high_water && !(c->flags & YMO_CONN_CHECKED_OUT)) {
            memcpy(ws->pong, ws->ctrl, ws->ctrl_len);
            ws->pong_len = ws->ctrl_len;
            ws->flags |= WF_PONG_DUE;
            return;
        }
        send_frame(c, 1, 0, YMO_WS_PONG, ws->ctrl, ws->ctrl_len, NULL);
        return;
    }
    if (opcode != YMO_WS_CLOSE)
        return;     /* an unsolicited pong is allowed and ignored */
    int code;
    int bad = ymo_ws_check_close(ws->ctrl, ws->ctrl_len, &code);
    if (bad) {
        fail(c, ws, bad, bad == YMO_WS_INVALID_DATA ? "invalid UTF-8 in the close reason"
                                                    : "invalid close frame");
        return;
    }
    ws->flags |= WF_CLOSE_RECEIVED;
    const char *reason = (const char *)ws->ctrl + 2;
    size_t rlen = ws->ctrl_len >= 2 ? ws->ctrl_len - 2 : 0;
    /* RFC 6455 5.5.1: echo the code, then close the TCP connection. */
    queue_close(c, ws, code == YMO_WS_NO_STATUS ? YMO_WS_NO_STATUS : code, "", 0);
    notify_close(c, ws, code, reason, rlen);
    ymo_conn_close_after_flush(c);
}

/* A data message arrived whole: inflate and check it, then hand it on. */
static int message(ymo_conn_t *c, ws_t *ws)
{
    ymo_ws_parser_t *p = &ws->parser;
    uint8_t *data = (uint8_t *)ws->msg.data;
    size_t len = ws->msg.len;
    ws->msg.data = NULL;
    ws->msg.len = ws->msg.cap = 0;
    if (p->msg_compressed) {
        uint8_t *out;
        size_t outlen;
        int r = ymo_ws_inflate(ws->deflate, data, len, ws->cfg.max_message, &out, &outlen);
        free(data);
        if (r != 0) {
            fail(c, ws, r, r == YMO_WS_TOO_BIG ? "message too big" : "invalid compressed data");
            return -1;
        }
        data = out;
        len = outlen;
        if (p->msg_opcode == YMO_WS_TEXT
            && ymo_utf8_validate(YMO_UTF8_ACCEPT, data, len) != YMO_UTF8_ACCEPT) {
            free(data);
            fail(c, ws, YMO_WS_INVALID_DATA, "invalid UTF-8 in a text message");
            return -1;
        }
    }
    if (data == NULL) {
        data = malloc(1);
        if (data == NULL) {
            fail(c, ws, YMO_WS_INTERNAL, "out of memory");
            return -1;
        }
    }
    ws->msg.data = (char *)data;
    ws->msg.len = len;
    ws->ready_opcode = p->msg_opcode;
    ws->flags |= WF_MSG_READY;
    ymo_conn_make_ready(c);
    return 0;
}

static void ws_process(ymo_conn_t *c, ws_t *ws)
{
    ymo_ws_parser_t *p = &ws->parser;
    int got = c->in.len > ws->scan;     /* new bytes from the peer */
    while (!(ws->flags & (WF_MSG_READY | WF_FAILED)) && !(c->flags & YMO_CONN_CLOSED)) {
        size_t consumed, off, n;
        uint8_t *buf = (uint8_t *)c->in.data + ws->scan;
        if (c->flags & (YMO_CONN_LINGERING | YMO_CONN_CLOSE_AFTER_FLUSH))
            break;      /* closing: the rest of the input is not read */
        /* Payload is unmasked straight into where it goes: the control
         * buffer, or the message buffer sized at the frame's header. */
        uint8_t *out = (p->frame.opcode & 0x8) ? ws->ctrl + ws->ctrl_len
                       : ws->msg.data != NULL ? (uint8_t *)ws->msg.data + ws->msg.len : NULL;
        int ev = ymo_ws_parse_to(p, buf, c->in.len - ws->scan, &consumed, &off, &n, out);
        ws->scan += consumed;
        if (ev == YMO_WS_EV_NONE)
            break;
        if (ev == YMO_WS_EV_ERROR) {
            fail(c, ws, p->error, p->reason);
            break;
        }
        if (ev == YMO_WS_EV_HEADER) {
            ws->ctrl_len = 0;
            /* Size the message buffer once for the frame that comes. */
            if (!(p->frame.opcode & 0x8) && p->frame.len > 0
                && msg_reserve(ws, (size_t)p->frame.len) < 0) {
                fail(c, ws, YMO_WS_INTERNAL, "out of memory");
                break;
            }
            continue;
        }
        int ctrl = p->frame.opcode & 0x8;
        if (ev == YMO_WS_EV_PAYLOAD) {
            if (ctrl)
                ws->ctrl_len += n;
            else
                ws->msg.len += n;
            continue;
        }
        /* YMO_WS_EV_FRAME_END */
        if (ctrl) {
            if (ws->flags & WF_CLOSE_RECEIVED)
                break;
            control(c, ws, p->frame.opcode);
        } else if (p->frame.fin && !(ws->flags & WF_CLOSE_RECEIVED)) {
            if (message(c, ws) < 0)
                break;
        }
    }
    /* Drop what was parsed; keep the rest at the front. A connection that
     * started closing may have dropped its input already. */
    if (ws->scan > c->in.len)
        ws->scan = c->in.len;
    if (ws->scan > 0 && !(c->flags & YMO_CONN_CLOSED)) {
        size_t left = c->in.len - ws->scan;
        memmove(c->in.data, c->in.data + ws->scan, left);
        c->in.len = left;
        ws->scan = 0;
    }
    if (c->flags & YMO_CONN_CLOSED)
        return;
    if (ws->flags & WF_MSG_READY)
        ymo_conn_read_stop(c);      /* one message at a time */
    else if (!(ws->flags & WF_CLOSE_RECEIVED) && !(c->flags & YMO_CONN_CLOSE_AFTER_FLUSH)) {
        if (c->in.len == 0)
            ymo_conn_release_input(c);
        ymo_conn_read_start(c);
        if (!(ws->flags & WF_CLOSE_SENT)) {
            /* Bytes from the peer show it is alive. */
            if (got || ws->last_rx == 0) {
                ws->last_rx = ev_now(c->server->loop);
                ws->flags &= ~WF_PING_OUT;
            }
            arm(c, ws);
        }
    }
}

/* --- Protocol callbacks ------------------------------------------------------ */

static void on_data(ymo_conn_t *c)
{
    ws_t *ws = WS(c);
    if (ws->flags & WF_OPEN_PENDING)
        ymo_conn_make_ready(c);     /* ws_open, from the ready list */
    ws_process(c, ws);
}

static void on_ready(ymo_conn_t *c)
{
    ws_t *ws = WS(c);
    ymo_server_t *s = c->server;
    if (ws->flags & WF_OPEN_PENDING) {
        /* Also when the peer went away already: ws_close follows, and an
         * opened connection hears of both. */
        ws->flags &= ~WF_OPEN_PENDING;
        if (!(ws->flags & WF_NOTIFIED) && s->hooks.ws_open != NULL)
            s->hooks.ws_open(s, c);
    }
    if (ws->flags & WF_MSG_READY) {
        uint8_t *data = (uint8_t *)ws->msg.data;
        size_t len = ws->msg.len;
        ws->msg.data = NULL;
        ws->msg.len = ws->msg.cap = 0;
        ws->flags &= ~WF_MSG_READY;
        if (!(c->flags & YMO_CONN_CLOSED) && !(ws->flags & WF_NOTIFIED))
            s->hooks.ws_message(s, c, ws->ready_opcode, data, len);
        else
            free(data);
        if (!(c->flags & YMO_CONN_CLOSED))
            ws_process(c, ws);
    }
    if ((ws->flags & WF_CLOSE_PENDING) && !(ws->flags & WF_NOTIFIED)) {
        ws->flags &= ~WF_CLOSE_PENDING;
        ws->flags |= WF_NOTIFIED;
        s->hooks.ws_close(s, c, ws->close_code, ws->close_reason, ws->close_reason_len);
    }
}

static void on_drained(ymo_conn_t *c)
{
    ws_t *ws = WS(c);
    if ((ws->flags & WF_PONG_DUE) && !(ws->flags & WF_CLOSE_SENT))
        send_frame(c, 1, 0, YMO_WS_PONG, ws->pong, ws->pong_len, NULL);
    ws->flags &= ~WF_PONG_DUE;
    /* A write blocked and is done: the idle and ping deadlines again, or,
     * once our close frame is out, the wait for the peer's. */
    if (c->flags & YMO_CONN_SEND_TIMER) {
        if (ws->flags & WF_CLOSE_SENT)
            ymo_conn_timer(c, CLOSE_WAIT);
        else
            arm(c, ws);
    }
}

static void on_timeout(ymo_conn_t *c)
{
    ws_t *ws = WS(c);
    if (c->flags & YMO_CONN_SEND_TIMER) {
        /* send_timeout without progress: a close frame would wait behind
         * what the peer does not read, so the connection just ends. */
        notify_close(c, ws, YMO_WS_ABNORMAL, "", 0);
        ymo_conn_close(c);
        return;
    }
    if (ws->flags & WF_CLOSE_SENT) {
        /* The peer never answered our close. */
        notify_close(c, ws, YMO_WS_ABNORMAL, "", 0);
        ymo_conn_close(c);
        return;
    }
    double quiet = ev_now(c->server->loop) - ws->last_rx;
    if (ws->cfg.idle_timeout > 0 && quiet + 0.001 >= ws->cfg.idle_timeout) {
        queue_close(c, ws, YMO_WS_GOING_AWAY, "idle timeout", 12);
        notify_close(c, ws, YMO_WS_GOING_AWAY, "idle timeout", 12);
        ymo_conn_close_after_flush(c);
        return;
    }
    if (ws->flags & WF_PING_OUT) {
        /* RFC 6455 5.5.2: the ping went unanswered. */
        queue_close(c, ws, YMO_WS_GOING_AWAY, "ping timeout", 12);
        notify_close(c, ws, YMO_WS_GOING_AWAY, "ping timeout", 12);
        ymo_conn_close_after_flush(c);
        return;
    }
    if (ws->cfg.ping_interval > 0) {
        send_frame(c, 1, 0, YMO_WS_PING, "yimmo", 5, NULL);
        ws->flags |= WF_PING_OUT;
    }
    arm(c, ws);
}

static void on_eof(ymo_conn_t *c, int err)
{
    ws_t *ws = WS(c);
    notify_close(c, ws, YMO_WS_ABNORMAL, "", 0);
    ymo_conn_close_after_flush(c);
}

static void on_close(ymo_conn_t *c)
{
    ws_t *ws = WS(c);
    if (!(ws->flags & WF_NOTIFIED)) {
        /* The embedder hears of it before the connection is freed. */
        notify_close(c, ws, YMO_WS_ABNORMAL, "", 0);
    }
}

static int busy(ymo_conn_t *c)
{
    ws_t *ws = WS(c);
    return !(ws->flags & WF_NOTIFIED);
}

static void on_free(ymo_conn_t *c)
{
    ws_t *ws = WS(c);
    if (ws == NULL)
        return;
    free(ws->msg.data);
    ymo_ws_deflate_free(ws->deflate);
    free(ws);
    c->proto_data = NULL;
}

/* RFC 6455 7.4.1: 1001, "going away"; the peer's close (or 5 s) ends it. */
static void on_stop(ymo_conn_t *c)
{
    ws_t *ws = WS(c);
    if (ws->flags & (WF_CLOSE_SENT | WF_NOTIFIED))
        return;
    queue_close(c, ws, YMO_WS_GOING_AWAY, "server shutting down", 20);
    if (ws->flags & WF_CLOSE_RECEIVED)
        ymo_conn_close_after_flush(c);
    else
        ymo_conn_timer(c, CLOSE_WAIT);
}

const ymo_proto_t ymo__ws_proto = {
    .on_stop = on_stop,
    .on_data = on_data,
    .on_drained = on_drained,
    .on_timeout = on_timeout,
    .on_eof = on_eof,
    .on_free = on_free,
    .on_close = on_close,
    .busy = busy,
    .on_ready = on_ready,
};

/* --- Blocking use, on a connection a worker thread owns ---------------------- */

/* The loop leaves a checked-out connection alone, so the worker drives the
 * same session by hand: parse what is buffered, wait for more with poll,
 * write with blocking flushes. */

/* Write what is queued, giving up as HTTP responses do: after the send
 * timeout without progress the peer is not reading, and the connection
 * closes (the handler's thread is not held for the idle timeout). */
static int sync_flush(ymo_conn_t *c)
{
    int r = ymo_conn_flush_sync(c, c->server->cfg.send_timeout);
    if (r == YMO_E_TIMEOUT)
        ymo_conn_close(c);
    return r;
}

int ymo_ws_sync_accept(ymo_conn_t *c, const ymo_ws_request_t *req, const char *subprotocol,
                       size_t sp_len, const ymo_ws_config_t *cfg, ymo_ws_t **out)
{
    int r = start(c, req, subprotocol, sp_len, cfg, NULL, out);
    if (r < 0)
        return r;
    (*out)->flags &= ~WF_OPEN_PENDING;     /* the application is told by accept() returning */
    c->flags |= YMO_CONN_STOP_WAKES;
    /* Frames that came right behind the handshake are the session's. */
    ymo_http_release_input(c);
    /* The HTTP exchange is over once the application returns: close then. */
    ymo_http_response_t *resp = ymo_http_response(c);
    resp->status = 101;
    resp->flags |= YMO_RESP_STARTED | YMO_RESP_HEAD_DONE | YMO_RESP_FINISHED | YMO_RESP_CLOSE;
    r = sync_flush(c);
    if (r < 0) {
        ymo_ws_sync_free(*out);
        *out = NULL;
    }
    return r;
}

static double monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int ymo_ws_sync_recv(ymo_conn_t *c, ymo_ws_t *ws, int *opcode, uint8_t **data, size_t *len)
{
    if (ws->sync_rx == 0)
        ws->sync_rx = monotonic();
    for (;;) {
        /* Frames that arrived with the last message come first. */
        if (!(ws->flags & WF_MSG_READY) && c->in.len > 0)
            ws_process(c, ws);
        if (ws->flags & WF_MSG_READY) {
            ws->flags &= ~WF_MSG_READY;
            *opcode = ws->ready_opcode;
            *data = (uint8_t *)ws->msg.data;
            *len = ws->msg.len;
            ws->msg.data = NULL;
            ws->msg.len = ws->msg.cap = 0;
            return 0;
        }
        /* Pongs and close replies go out before waiting. */
        int r = sync_flush(c);
        if (ws->flags & (WF_CLOSE_PENDING | WF_NOTIFIED)) {
            ws->flags &= ~WF_CLOSE_PENDING;
            ws->flags |= WF_NOTIFIED;
            return 1;
        }
        if (r < 0 || (c->flags & YMO_CONN_CLOSED) || (c->flags & YMO_CONN_CLOSE_AFTER_FLUSH)) {
            notify_close(c, ws, YMO_WS_ABNORMAL, "", 0);
            continue;
        }
        if (c->server->stop_requested && !(ws->flags & WF_CLOSE_SENT)) {
            /* RFC 6455 7.4.1: going away; then wait for the peer's close. */
            queue_close(c, ws, YMO_WS_GOING_AWAY, "server shutting down", 20);
            continue;
        }
        /* Wait for the peer until the idle timeout, or the keep-alive ping
         * is due, or its answer overdue (the loop's on_timeout, by hand). */
        double now = monotonic();
        double wait = ws->sync_rx + ws->cfg.idle_timeout - now;
        if ((ws->flags & WF_CLOSE_SENT) && wait > CLOSE_WAIT)
            wait = CLOSE_WAIT;  /* our close is out: the peer's, as on the loop */
        else if (ws->cfg.ping_interval > 0) {
            double due = (ws->flags & WF_PING_OUT) ? ws->ping_sent + ws->cfg.ping_timeout
                                                   : ws->sync_rx + ws->cfg.ping_interval;
            if (due - now < wait)
                wait = due - now;
        }
        r = ymo_conn_read_sync(c, wait > 0 ? wait : 0);
        if (r == 1)
            continue;   /* the server stops: said above, on the next turn */
        if (r == YMO_E_TIMEOUT) {
            now = monotonic();
            if (ws->flags & WF_CLOSE_SENT) {
                /* The peer never answered our close. */
                notify_close(c, ws, YMO_WS_ABNORMAL, "", 0);
            } else if (now - ws->sync_rx >= ws->cfg.idle_timeout) {
                queue_close(c, ws, YMO_WS_GOING_AWAY, "idle timeout", 12);
                notify_close(c, ws, YMO_WS_GOING_AWAY, "idle timeout", 12);
            } else if (ws->flags & WF_PING_OUT) {
                if (now - ws->ping_sent >= ws->cfg.ping_timeout) {
                    /* RFC 6455 5.5.2: the ping went unanswered. */
                    queue_close(c, ws, YMO_WS_GOING_AWAY, "ping timeout", 12);
                    notify_close(c, ws, YMO_WS_GOING_AWAY, "ping timeout", 12);
                }
            } else if (ws->cfg.ping_interval > 0 && !(ws->flags & WF_CLOSE_SENT)) {
                send_frame(c, 1, 0, YMO_WS_PING, "yimmo", 5, NULL);
                ws->flags |= WF_PING_OUT;
                ws->ping_sent = now;
            }
            continue;
        }
        if (r < 0) {
            notify_close(c, ws, YMO_WS_ABNORMAL, "", 0);
            continue;
        }
        /* Bytes from the peer show it is alive. */
        ws->sync_rx = monotonic();
        ws->flags &= ~WF_PING_OUT;
        ws_process(c, ws);
    }
}

int ymo_ws_sync_send(ymo_conn_t *c, ymo_ws_t *ws, int opcode, const void *data, size_t len, int fin)
{
    int r = send_msg(c, ws, opcode, data, len, fin, NULL);
    return r < 0 ? r : sync_flush(c);
}

int ymo_ws_sync_ping(ymo_conn_t *c, ymo_ws_t *ws, const void *data, size_t len)
{
    if (ws->flags & WF_CLOSE_SENT)
        return YMO_E_CLOSED;
    int r = send_frame(c, 1, 0, YMO_WS_PING, data, len, NULL);
    return r < 0 ? r : sync_flush(c);
}

int ymo_ws_sync_close(ymo_conn_t *c, ymo_ws_t *ws, int code, const char *reason, size_t len)
{
    queue_close(c, ws, code, reason, len);
    int r = sync_flush(c);
    /* Wait briefly for the peer's close (RFC 6455 7.1.1: the server closes
     * the TCP connection first once both close frames are exchanged). */
    for (int i = 0; r == 0 && i < 16 && !(ws->flags & WF_CLOSE_RECEIVED)
                    && !(c->flags & YMO_CONN_CLOSED); i++) {
        if (ymo_conn_read_sync(c, 1.0) < 0)
            break;
        ws_process(c, ws);
        if (ws->flags & WF_MSG_READY) {
            /* Data after our close is dropped (RFC 6455 1.4). */
            free(ws->msg.data);
            ws->msg.data = NULL;
            ws->msg.len = ws->msg.cap = 0;
            ws->flags &= ~WF_MSG_READY;
        }
    }
    ws->flags |= WF_NOTIFIED;
    return r;
}

int ymo_ws_sync_code(ymo_ws_t *ws, const char **reason, size_t *len)
{
    *reason = ws->close_reason;
    *len = ws->close_reason_len;
    return ws->close_code;
}

void ymo_ws_sync_free(ymo_ws_t *ws)
{
    if (ws == NULL)
        return;
    free(ws->msg.data);
    ymo_ws_deflate_free(ws->deflate);
    free(ws);
}
