/*
 * HTTP/1.x on a connection: the request's life from its first byte to the
 * last byte of its response, pipelining, keep-alive and error answers.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core_internal.h"
#include "yimmo/exchange.h"

enum {
    S_IDLE,         /* between requests */
    S_HEAD,         /* reading the head */
    S_BODY,         /* reading the body */
    S_READY,        /* complete (or waiting for 100-continue), queued */
    S_RUNNING,      /* the handler runs */
    S_DEAD          /* answered with an error, closing */
};

enum {
    SF_BODY_DONE = 1u << 0,     /* the body has been read in full */
    SF_CONTINUE_SENT = 1u << 1,
    SF_PEER_EOF = 1u << 2,      /* the peer finished sending */
    SF_SUSPENDED = 1u << 3,     /* the exchange waits for its output to drain */
    SF_RESUME = 1u << 4         /* ... and may go on */
};

typedef struct {
    ymo_http_parser_t parser;
    ymo_http_header_t *headers;
    uint32_t state;
    uint32_t flags;
    size_t rstart;      /* the request's first byte in c->in */
    size_t scan;        /* next unparsed byte, from rstart */
    size_t body_end;    /* end of the decoded body, from rstart */
    size_t body_rpos;   /* streamed up to here, from rstart */
    ymo_http_response_t resp;
    void *exchange;
    const ymo_proto_t *upgrade;     /* the protocol to switch to, after this exchange */
    void *upgrade_data;
    /* A body spooled to a temporary file (handlers on the loop thread):
     * spool_len bytes, read back from spool_pos through spool_buf, which
     * holds spool_buf_len bytes from file offset spool_buf_off. */
    int spool_fd;
    uint64_t spool_len, spool_pos, spool_buf_off;
    size_t spool_buf_len;
    char *spool_buf;
} session_t;

#define SESSION(c) ((session_t *)(c)->proto_data)

static void process(ymo_conn_t *c);
static void spool_end(session_t *ss);

/* --- Error answers ------------------------------------------------------- */

static void peer_string(ymo_conn_t *c, char *buf, size_t len);

int ymo_http_respond_error(ymo_conn_t *c, int status, const char *reason)
{
    session_t *ss = SESSION(c);
    ymo_server_t *s = c->server;
    const char *phrase = ymo_http_reason(status);
    char peer[64];
    peer_string(c, peer, sizeof(peer));
    ymo__log(s, YMO_LOG_INFO, "%d %s from %s: %s", status, phrase, peer, reason);

    ss->state = S_DEAD;
    spool_end(ss);
    if (ss->resp.flags & YMO_RESP_STARTED) {
        /* The application's response is on its way (it answered before
         * reading the body): a status line now would land inside it. What
         * is queued goes, then the connection closes (RFC 9112 9.6), which
         * shows the client the response is cut. */
        ss->resp.flags |= YMO_RESP_FINISHED | YMO_RESP_CLOSE;
        ymo_conn_timer(c, 0);
        ymo_conn_close_after_flush(c);
        return 0;
    }
    char head[512];
    size_t dlen;
    const char *date = ymo_server_date(s, &dlen);
    char body[256];
    int blen = snprintf(body, sizeof(body), "%d %s: %s\n", status, phrase, reason);
    if (blen < 0 || (size_t)blen >= sizeof(body))
        blen = (int)sizeof(body) - 1;
    int hlen = snprintf(head, sizeof(head),
                        "HTTP/1.1 %d %s\r\nServer: yimmo\r\n%.*s"
                        "Content-Type: text/plain; charset=utf-8\r\n"
                        "Content-Length: %d\r\nConnection: close\r\n\r\n",
                        status, phrase, (int)dlen, date, blen);
    /* The exchange in progress, if any, counts as answered. */
    ss->resp.status = status;
    ss->resp.flags = YMO_RESP_STARTED | YMO_RESP_HEAD_DONE | YMO_RESP_FINISHED | YMO_RESP_CLOSE;
    ymo_conn_timer(c, 0);
    int rc = ymo_outq_copy(&c->out, head, (size_t)hlen);
    if (rc == 0)
        rc = ymo_outq_copy(&c->out, body, (size_t)blen);
    if (rc < 0) {
        ymo_conn_close(c);
        return rc;
    }
    ymo_conn_close_after_flush(c);
    return 0;
}

static void peer_string(ymo_conn_t *c, char *buf, size_t len)
{
    size_t hl;
    int port;
    const char *host = ymo_conn_peer_host(c, &hl, &port);
    if (hl == 0)
        snprintf(buf, len, "unix");
    else
        snprintf(buf, len, "%s:%d", host, port);
}

static void parse_failed(ymo_conn_t *c, int err)
{
    ymo_http_respond_error(c, ymo_http_error_status(err), ymo_strerror(err));
}

/* --- Reading requests ---------------------------------------------------- */

/* Move the request in progress to the front of the buffer so the buffer
 * never grows by what earlier requests left behind. Spans are relative to
 * the request's first byte, so they stay valid. */
static void compact(ymo_conn_t *c, session_t *ss)
{
    if (ss->rstart == 0)
        return;
    size_t left = c->in.len - ss->rstart;
    if (left > 0)
        memmove(c->in.data, c->in.data + ss->rstart, left);
    c->in.len = left;
    ss->rstart = 0;
}

/* Decode what has arrived of the body into place, right after the head.
 * Waiting for more, the chunk framing already decoded is dropped from the
 * buffer (what follows moves down onto the body's end): a body of tiny
 * chunks with long extensions costs its decoded size, not its raw one. */
static int read_body(ymo_conn_t *c, session_t *ss)
{
    char *base = c->in.data + ss->rstart;
    size_t avail = c->in.len - ss->rstart;
    for (;;) {
        size_t consumed = 0, doff = 0, dlen = 0;
        int r = ymo_http_parse_body(&ss->parser, base + ss->scan, avail - ss->scan,
                                    &consumed, &doff, &dlen);
        if (dlen > 0) {
            char *src = base + ss->scan + doff;
            char *dst = base + ss->body_end;
            if (src != dst)
                memmove(dst, src, dlen);
            ss->body_end += dlen;
        }
        ss->scan += consumed;
        if (r == YMO_AGAIN && consumed == 0 && ss->scan > ss->body_end) {
            memmove(base + ss->body_end, base + ss->scan, avail - ss->scan);
            c->in.len -= ss->scan - ss->body_end;
            ss->scan = ss->body_end;
            return r;
        }
        if (r != YMO_AGAIN || consumed == 0)
            return r;
    }
}

/* --- Spooled bodies -------------------------------------------------------
 *
 * A handler on the loop thread must never wait for the network: while it
 * runs, nothing else is served. So when handlers run there (no worker
 * threads), a body is read in full before the handler is called, and one
 * larger than body_buffer_max goes to an unlinked temporary file in
 * $TMPDIR (or /tmp) as it is decoded: a slow upload costs a descriptor
 * and disk, not the loop, and a large one not its size in memory. */

#define SPOOL_CHUNK 65536

static int handlers_on_loop(const ymo_server_t *s)
{
    return s->hooks.submit == NULL;
}

static int spool_open(void)
{
    const char *dir = getenv("TMPDIR");
    if (dir == NULL || dir[0] == '\0')
        dir = "/tmp";
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
        return fd < 0 ? -errno : fd;
    /* A file system without O_TMPFILE: a named file, unlinked at once. */
    char path[4096];
    if (snprintf(path, sizeof(path), "%s/yimmo-body-XXXXXX", dir) >= (int)sizeof(path))
        return -ENAMETOOLONG;
    fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0)
        return -errno;
    unlink(path);
    return fd;
}

static void spool_end(session_t *ss)
{
    if (ss->spool_fd >= 0)
        close(ss->spool_fd);
    ss->spool_fd = -1;
    ss->spool_len = ss->spool_pos = ss->spool_buf_off = 0;
    ss->spool_buf_len = 0;
    free(ss->spool_buf);
    ss->spool_buf = NULL;
}

/* Move the body decoded so far to the spool file, and its room back to
 * the input buffer. 0, or -errno. */
static int spill(ymo_conn_t *c, session_t *ss)
{
    if (ss->spool_fd < 0 && (ss->spool_fd = spool_open()) < 0) {
        int e = ss->spool_fd;
        ss->spool_fd = -1;
        return e;
    }
    char *base = c->in.data + ss->rstart;
    size_t head = ss->parser.head_len;
    for (size_t off = head; off < ss->body_end;) {
        ssize_t n = write(ss->spool_fd, base + off, ss->body_end - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        off += (size_t)n;
        ss->spool_len += (uint64_t)n;
    }
    size_t rest = c->in.len - ss->rstart - ss->scan;
    memmove(base + head, base + ss->scan, rest);
    c->in.len = ss->rstart + head + rest;
    ss->scan = ss->body_end = ss->body_rpos = head;
    /* Reads of up to 256 KiB grew the buffer; an upload that stalls here
     * keeps a buffer of its body_buffer_max's order, not that. */
    ymo__conn_shrink_input(c, c->in.len + c->server->cfg.body_buffer_max);
    return 0;
}

/* Queue 100 Continue, once (RFC 9110 10.1.1). */
static int queue_continue(ymo_conn_t *c, session_t *ss)
{
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    ss->flags |= SF_CONTINUE_SENT;
    return ymo_outq_copy(&c->out, cont, sizeof(cont) - 1);
}

static int expects_body(const ymo_http_parser_t *p)
{
    return (p->flags & YMO_HTTP_F_CHUNKED)
           || ((p->flags & YMO_HTTP_F_CONTENT_LENGTH) && p->content_length > 0);
}

/* The peer ended its side half-way through a request nobody will answer.
 * The answers to the requests before it may still be queued: they go out
 * (a blocked write gets the send timeout), then the connection closes. */
static void partial_then_eof(ymo_conn_t *c, session_t *ss)
{
    ss->state = S_DEAD;
    ymo_conn_timer(c, 0);
    ymo_conn_close_after_flush(c);
}

static void process(ymo_conn_t *c)
{
    session_t *ss = SESSION(c);
    ymo_server_t *s = c->server;
    int r, r2;

    for (;;) {
        switch (ss->state) {
        case S_IDLE:
            if (c->in.len == ss->rstart) {
                c->in.len = 0;
                ss->rstart = 0;
                ymo_conn_release_input(c);
                ymo__outq_trim(&c->out, s);
                if (c->flags & (YMO_CONN_DRAINING | YMO_CONN_EOF)) {
                    ymo_conn_close_after_flush(c);
                    return;
                }
                ymo_conn_timer(c, s->cfg.keepalive_timeout);
                if (c->out.bytes < s->cfg.output_high_water)
                    ymo_conn_read_start(c);
                return;
            }
            /* Stop parsing while a client that pipelines does not read its
             * answers; on_drained resumes. */
            if (c->out.bytes >= s->cfg.output_high_water) {
                ymo_conn_read_stop(c);
                return;
            }
            if (ss->headers == NULL) {
                ss->headers = ymo__server_headers_get(s);
                if (ss->headers == NULL) {
                    ymo__log(s, YMO_LOG_ERROR, "out of memory for a request");
                    ymo_conn_close(c);
                    return;
                }
            }
            ymo__outq_adopt(&c->out, s);
            ymo_http_parser_init(&ss->parser, &s->cfg.http, ss->headers);
            memset(&ss->resp, 0, sizeof(ss->resp));
            ss->flags &= SF_PEER_EOF;
            ss->state = S_HEAD;
            /* The header timeout runs from the first byte, not from the
             * last: a slow trickle of bytes does not extend it. */
            ymo_conn_timer(c, s->cfg.header_timeout);
            /* fall through */
        case S_HEAD:
            r = ymo_http_parse_head(&ss->parser, c->in.data + ss->rstart, c->in.len - ss->rstart);
            if (r == YMO_AGAIN) {
                if (c->flags & YMO_CONN_EOF) {
                    partial_then_eof(c, ss);
                    return;
                }
                compact(c, ss);
                ymo_conn_read_start(c);
                return;
            }
            if (r < 0) {
                parse_failed(c, r);
                return;
            }
            if (ss->parser.flags & YMO_HTTP_F_CONNECT) {
                /* RFC 9110 9.3.6: a 2xx would make the connection a tunnel
                 * (RFC 9112 6.3), which no handler here can serve. */
                ymo_http_respond_error(c, 501, "CONNECT is not supported");
                return;
            }
            ss->scan = ss->body_end = ss->body_rpos = ss->parser.head_len;
            if (!expects_body(&ss->parser)) {
                ss->flags |= SF_BODY_DONE;
                ss->state = S_READY;
                continue;
            }
            int large = (ss->parser.flags & YMO_HTTP_F_CONTENT_LENGTH)
                        && ss->parser.content_length > s->cfg.body_buffer_max;
            if (!handlers_on_loop(s)
                && ((ss->parser.flags & YMO_HTTP_F_EXPECT_CONTINUE) || large)) {
                /* RFC 9110 10.1.1: the handler decides first; 100
                 * Continue goes out when it asks for the body. A body
                 * larger than the buffer streams to the handler (on its
                 * worker thread) as it reads. */
                ss->state = S_READY;
                continue;
            }
            /* With handlers on the loop the body is read first: 100
             * Continue goes out now. */
            if ((ss->parser.flags & YMO_HTTP_F_EXPECT_CONTINUE)
                && (queue_continue(c, ss) < 0 || ymo_conn_flush(c) < 0)) {
                ymo_conn_close(c);
                return;
            }
            if ((ss->parser.flags & YMO_HTTP_F_CONTENT_LENGTH) && !large) {
                size_t want = ss->parser.head_len + (size_t)ss->parser.content_length;
                if (c->in.len - ss->rstart < want) {
                    compact(c, ss);
                    if (ymo_conn_reserve(c, want - c->in.len) < 0) {
                        ymo_http_respond_error(c, 503, "out of memory");
                        return;
                    }
                }
            }
            ss->state = S_BODY;
            ymo_conn_timer(c, s->cfg.body_timeout);
            /* fall through */
        case S_BODY:
            r = read_body(c, ss);
            int over = ss->body_end - ss->parser.head_len > s->cfg.body_buffer_max;
            if (r == YMO_AGAIN && over && !handlers_on_loop(s)) {
                /* A chunked body outgrew the buffer: what is decoded so
                 * far was checked; the handler streams the rest. Smaller
                 * ones are read (and refused, if malformed) first. */
                ss->state = S_READY;
                continue;
            }
            /* On the loop: past the buffer, and the rest of a body begun
             * so, to the spool file. */
            if (((r == YMO_AGAIN && over) || (r == YMO_OK && ss->spool_fd >= 0))
                && (r2 = spill(c, ss)) < 0) {
                ymo__log(s, YMO_LOG_ERROR, "spooling a request body: %s", ymo_strerror(r2));
                ymo_http_respond_error(c, 503, "could not store the request body");
                return;
            }
            if (r == YMO_AGAIN) {
                if (c->flags & YMO_CONN_EOF) {
                    partial_then_eof(c, ss);
                    return;
                }
                compact(c, ss);
                ymo_conn_timer(c, s->cfg.body_timeout);
                ymo_conn_read_start(c);
                return;
            }
            if (r < 0) {
                parse_failed(c, r);
                return;
            }
            ss->flags |= SF_BODY_DONE;
            ss->state = S_READY;
            /* fall through */
        case S_READY:
            ymo_conn_read_stop(c);
            ymo_conn_timer(c, 0);
            ymo_conn_make_ready(c);
            return;
        default:
            return;
        }
    }
}

/* Leave HTTP for the protocol the exchange upgraded to; the bytes behind
 * the request stay in c->in for it (RFC 6455 4.2.2, RFC 9110 7.8). */
static void switch_protocol(ymo_conn_t *c, session_t *ss)
{
    const ymo_proto_t *proto = ss->upgrade;
    void *data = ss->upgrade_data;
    ss->rstart += ss->scan;
    compact(c, ss);
    ymo__server_headers_put(c->server, ss->headers);
    free(ss);
    c->proto = proto;
    c->proto_data = data;
    ymo_conn_timer(c, 0);
    ymo_conn_read_start(c);
    /* Also with nothing buffered: the new protocol arms its own timers. */
    proto->on_data(c);
}

/* The handler is done with the exchange: step past the request. Returns 1
 * when the connection left HTTP (ss is gone). */
static int exchange_done(ymo_conn_t *c, session_t *ss)
{
    ymo_http_response_t *resp = &ss->resp;
    ss->exchange = NULL;
    spool_end(ss);
    if (ss->state == S_RUNNING && ss->upgrade != NULL && (c->flags & YMO_CONN_CLOSED) == 0) {
        switch_protocol(c, ss);
        return 1;
    }
    if (ss->state != S_RUNNING)
        return 0;     /* answered with an error on the way */
    if (!(resp->flags & YMO_RESP_FINISHED) || (resp->flags & YMO_RESP_CLOSE)
        || !(ss->flags & SF_BODY_DONE) || !(ss->parser.flags & YMO_HTTP_F_KEEPALIVE)) {
        /* Without the whole body read, where the next request starts is
         * unknown: close (RFC 9110 10.1.1 allows it). */
        ss->state = S_DEAD;
        ymo_conn_close_after_flush(c);
        return 0;
    }
    ss->rstart += ss->scan;
    ss->state = S_IDLE;
    ymo__server_headers_put(c->server, ss->headers);
    ss->headers = NULL;
    return 0;
}

void ymo__http_run(ymo_conn_t *c)
{
    session_t *ss = SESSION(c);
    ymo_server_t *s = c->server;
    if (ss->flags & SF_RESUME) {
        ss->flags &= ~(SF_RESUME | SF_SUSPENDED);
        s->hooks.resume(s, c);
        if (c->flags & YMO_CONN_CLOSED)
            return;
        if (ss->flags & SF_SUSPENDED)
            return;
        if (exchange_done(c, ss))
            return;
        if (ss->state == S_IDLE)
            process(c);
    }
    if (c->flags & YMO_CONN_CLOSED)
        return;
    if (s->hooks.submit != NULL) {
        if (ss->state != S_READY || (c->flags & YMO_CONN_CLOSED))
            return;
        /* The worker takes the connection whole: earlier responses must
         * be out first, so that only one thread writes. */
        if (c->out.bytes > 0) {
            c->flags |= YMO_CONN_WAIT_DRAIN;
            return;
        }
        ss->state = S_RUNNING;
        ymo_conn_check_out(c);
        s->nchecked_out++;
        ev_ref(s->loop);
        s->hooks.submit(s, c);
        return;
    }
    for (int i = 0; i < s->cfg.max_dispatch; i++) {
        if (ss->state != S_READY || (c->flags & YMO_CONN_CLOSED))
            return;
        ss->state = S_RUNNING;
        s->hooks.on_request(s, c);
        if (c->flags & YMO_CONN_CLOSED)
            return;
        if (ss->flags & SF_SUSPENDED)
            return;     /* resumed once its output drains */
        if (exchange_done(c, ss))
            return;
        if (ss->state == S_IDLE)
            process(c);
    }
    /* Still more pipelined requests: the next loop iteration takes them. */
    if (ss->state == S_READY)
        ymo_conn_make_ready(c);
}

void ymo__http_checkin(ymo_conn_t *c)
{
    session_t *ss = SESSION(c);
    if (exchange_done(c, ss))
        return;
    if (c->flags & YMO_CONN_CLOSE_AFTER_FLUSH) {
        /* Recorded while checked out: carry it out now. */
        c->flags &= ~YMO_CONN_CLOSE_AFTER_FLUSH;
        ymo_conn_close_after_flush(c);
    }
    if (c->flags & YMO_CONN_CLOSED)
        return;
    if (ss->state == S_IDLE)
        process(c);
    ymo_conn_flush(c);
}

static void on_stop(ymo_conn_t *c)
{
    session_t *ss = SESSION(c);
    if (ss->state == S_IDLE && c->in.len == ss->rstart && c->out.bytes == 0)
        ymo_conn_close(c);
}

/* --- Protocol callbacks -------------------------------------------------- */

static void on_data(ymo_conn_t *c)
{
    process(c);
}

static void on_drained(ymo_conn_t *c)
{
    session_t *ss = SESSION(c);
    if (ss->flags & SF_SUSPENDED) {
        ss->flags |= SF_RESUME;
        ymo_conn_make_ready(c);
        return;
    }
    if (c->flags & YMO_CONN_WAIT_DRAIN) {
        c->flags &= ~YMO_CONN_WAIT_DRAIN;
        if (ss->state == S_READY)
            ymo_conn_make_ready(c);
        return;
    }
    if (ss->state == S_IDLE) {
        if ((c->flags & YMO_CONN_DRAINING) && c->in.len == ss->rstart) {
            ymo_conn_close(c);
            return;
        }
        process(c);
    }
}

static void on_timeout(ymo_conn_t *c)
{
    session_t *ss = SESSION(c);
    switch (ss->state) {
    case S_HEAD:
        if (c->in.len > ss->rstart) {
            ymo_http_respond_error(c, 408, "request head not received in time");
            return;
        }
        break;
    case S_BODY:
        ymo_http_respond_error(c, 408, "request body not received in time");
        return;
    default:
        break;
    }
    ymo_conn_close(c);
}

static void on_eof(ymo_conn_t *c, int err)
{
    session_t *ss = SESSION(c);
    ss->flags |= SF_PEER_EOF;
    switch (ss->state) {
    case S_IDLE:
        if (c->in.len == ss->rstart) {
            ymo_conn_close_after_flush(c);
            return;
        }
        /* A partial request, then EOF: nobody is left to answer it. */
        partial_then_eof(c, ss);
        return;
    case S_HEAD:
    case S_BODY:
        /* What arrived was parsed already; the rest never will. */
        partial_then_eof(c, ss);
        return;
    default:
        /* The request is complete: answer it, then close. */
        if (err != 0)
            ymo_conn_close(c);
        return;
    }
}

/* A suspended exchange is told, so its producer is closed (PEP 3333). */
static void on_close(ymo_conn_t *c)
{
    session_t *ss = SESSION(c);
    if (ss != NULL && (ss->flags & SF_SUSPENDED)) {
        ss->flags |= SF_RESUME;
        ymo_conn_make_ready(c);
    }
}

static int busy(ymo_conn_t *c)
{
    session_t *ss = SESSION(c);
    return ss != NULL && (ss->flags & SF_SUSPENDED);
}

static void on_free(ymo_conn_t *c)
{
    session_t *ss = SESSION(c);
    if (ss == NULL)
        return;
    ymo__server_headers_put(c->server, ss->headers);
    spool_end(ss);
    const ymo_proto_t *up = ss->upgrade;
    void *up_data = ss->upgrade_data;
    free(ss);
    c->proto_data = NULL;
    if (up != NULL) {
        /* Closed before the switch: the next protocol frees its state. */
        c->proto_data = up_data;
        up->on_free(c);
    }
}

const ymo_proto_t ymo__http_proto = {
    .on_stop = on_stop,
    .on_data = on_data,
    .on_drained = on_drained,
    .on_timeout = on_timeout,
    .on_eof = on_eof,
    .on_free = on_free,
    .on_close = on_close,
    .busy = busy,
    .on_ready = ymo__http_run,
};

int ymo__http_attach(ymo_conn_t *c)
{
    session_t *ss = calloc(1, sizeof(*ss));
    if (ss == NULL)
        return YMO_E_NOMEM;
    c->proto = &ymo__http_proto;
    c->proto_data = ss;
    ss->state = S_IDLE;
    ss->spool_fd = -1;
    ymo_conn_read_start(c);
    ymo_conn_timer(c, c->server->cfg.header_timeout);
    return 0;
}

/* --- The exchange API ---------------------------------------------------- */

const ymo_http_parser_t *ymo_http_request(ymo_conn_t *c, const char **base)
{
    session_t *ss = SESSION(c);
    *base = c->in.data + ss->rstart;
    return &ss->parser;
}

int ymo_http_body(ymo_conn_t *c, const char **data, size_t *len)
{
    session_t *ss = SESSION(c);
    if (ss->spool_fd >= 0)
        return YMO_E_STATE;     /* in a file: ymo_http_body_stream reads it */
    if (!(ss->flags & SF_BODY_DONE))
        return YMO_AGAIN;
    *data = c->in.data + ss->rstart + ss->parser.head_len;
    *len = ss->body_end - ss->parser.head_len;
    return YMO_OK;
}

/* Send 100 Continue once, the first time the handler wants the body, and
 * only while no response has started (RFC 9110 10.1.1). */
static int send_continue(ymo_conn_t *c, session_t *ss)
{
    if ((ss->flags & SF_CONTINUE_SENT) || (ss->resp.flags & YMO_RESP_STARTED)
        || !(ss->parser.flags & YMO_HTTP_F_EXPECT_CONTINUE))
        return 0;
    int r = queue_continue(c, ss);
    if (r == 0)
        r = ymo_conn_flush_sync(c, c->server->cfg.send_timeout);
    return r;
}

/* Decode what is buffered; when nothing more can be, wait for bytes.
 * Returns YMO_OK at the end of the body, YMO_AGAIN after progress, or an
 * error with the connection answered or closed. */
static int pull_body(ymo_conn_t *c, session_t *ss)
{
    size_t before = ss->body_end;
    int r = read_body(c, ss);
    if (r == YMO_OK) {
        ss->flags |= SF_BODY_DONE;
        return YMO_OK;
    }
    if (r != YMO_AGAIN) {
        parse_failed(c, r);
        return r;
    }
    if (ss->body_end > before)
        return YMO_AGAIN;
    r = send_continue(c, ss);
    /* What the handler queued goes first: a client may hold its body back
     * until it sees the answer begin (no 100 once the response started). */
    if (r == 0 && c->out.bytes > 0)
        r = ymo_conn_write_now(c);
    if (r == 0)
        r = ymo_conn_read_sync(c, c->server->cfg.body_timeout);
    if (r == YMO_E_TIMEOUT) {
        ymo_http_respond_error(c, 408, "request body not received in time");
        return r;
    }
    if (r < 0) {
        ymo_conn_close(c);
        return r;
    }
    return YMO_AGAIN;
}

int ymo_http_body_wait(ymo_conn_t *c)
{
    session_t *ss = SESSION(c);
    if (ss->flags & SF_BODY_DONE)
        return 0;
    if (ss->state != S_RUNNING || (c->flags & YMO_CONN_CLOSED))
        return YMO_E_STATE;
    if (ss->body_rpos > ss->parser.head_len)
        return YMO_E_STATE;     /* part of it was streamed away already */
    if (ss->parser.flags & YMO_HTTP_F_CONTENT_LENGTH) {
        size_t want = ss->parser.head_len + (size_t)ss->parser.content_length;
        if (c->in.len - ss->rstart < want && ymo_conn_reserve(c, want - (c->in.len - ss->rstart)) < 0) {
            ymo_http_respond_error(c, 503, "out of memory");
            return YMO_E_NOMEM;
        }
    }
    for (;;) {
        int r = pull_body(c, ss);
        if (r == YMO_OK)
            return 0;
        if (r != YMO_AGAIN)
            return r;
    }
}

/* The next piece of a spooled body, from spool_buf: read back a block at
 * a time, so that lines handed back with ymo_http_body_unread are served
 * again from memory, not read again from the file. */
static ssize_t spool_read(session_t *ss, const char **data, size_t max)
{
    if (ss->spool_pos == ss->spool_len || max == 0)
        return 0;
    if (ss->spool_pos < ss->spool_buf_off
        || ss->spool_pos >= ss->spool_buf_off + ss->spool_buf_len) {
        if (ss->spool_buf == NULL && (ss->spool_buf = malloc(SPOOL_CHUNK)) == NULL)
            return YMO_E_NOMEM;
        uint64_t left = ss->spool_len - ss->spool_pos;
        size_t want = left < SPOOL_CHUNK ? (size_t)left : SPOOL_CHUNK;
        ssize_t r;
        do
            r = pread(ss->spool_fd, ss->spool_buf, want, (off_t)ss->spool_pos);
        while (r < 0 && errno == EINTR);
        if (r <= 0)
            return r < 0 ? -errno : -EIO;
        ss->spool_buf_off = ss->spool_pos;
        ss->spool_buf_len = (size_t)r;
    }
    size_t at = (size_t)(ss->spool_pos - ss->spool_buf_off);
    size_t n = ss->spool_buf_len - at;
    if (n > max)
        n = max;
    ss->spool_pos += n;
    *data = ss->spool_buf + at;
    return (ssize_t)n;
}

ssize_t ymo_http_body_stream(ymo_conn_t *c, const char **data, size_t max)
{
    session_t *ss = SESSION(c);
    if (ss->state != S_RUNNING || (c->flags & YMO_CONN_CLOSED))
        return YMO_E_STATE;
    if (ss->spool_fd >= 0)
        return spool_read(ss, data, max);
    for (;;) {
        if (ss->body_rpos < ss->body_end) {
            size_t n = ss->body_end - ss->body_rpos;
            if (n > max)
                n = max;
            *data = c->in.data + ss->rstart + ss->body_rpos;
            ss->body_rpos += n;
            return (ssize_t)n;
        }
        if (ss->flags & SF_BODY_DONE)
            return 0;
        /* Everything decoded was handed out: reuse its room, so a large
         * upload costs a buffer, not its size. */
        size_t head = ss->parser.head_len;
        if (ss->body_end > head) {
            char *base = c->in.data + ss->rstart;
            size_t rest = c->in.len - ss->rstart - ss->scan;
            memmove(base + head, base + ss->scan, rest);
            c->in.len = ss->rstart + head + rest;
            ss->scan = ss->body_end = ss->body_rpos = head;
        }
        int r = pull_body(c, ss);
        if (r < 0 && r != YMO_AGAIN)
            return r;
    }
}

void ymo_http_body_unread(ymo_conn_t *c, size_t n)
{
    session_t *ss = SESSION(c);
    if (ss->spool_fd >= 0) {
        if (n <= ss->spool_pos)
            ss->spool_pos -= n;
        return;
    }
    if (n <= ss->body_rpos - ss->parser.head_len)
        ss->body_rpos -= n;
}

void ymo_http_set_exchange(ymo_conn_t *c, void *exchange)
{
    SESSION(c)->exchange = exchange;
}

void *ymo_http_exchange(ymo_conn_t *c)
{
    return SESSION(c)->exchange;
}

void ymo_http_suspend(ymo_conn_t *c)
{
    SESSION(c)->flags |= SF_SUSPENDED;
}

void ymo_http_release_input(ymo_conn_t *c)
{
    session_t *ss = SESSION(c);
    ss->rstart += ss->scan;
    compact(c, ss);
    ss->scan = ss->body_end = ss->body_rpos = 0;
}

void ymo_http_upgrade(ymo_conn_t *c, const ymo_proto_t *proto, void *data)
{
    session_t *ss = SESSION(c);
    ss->upgrade = proto;
    ss->upgrade_data = data;
    ss->resp.flags |= YMO_RESP_STARTED | YMO_RESP_HEAD_DONE | YMO_RESP_FINISHED;
}

ymo_http_response_t *ymo_http_response(ymo_conn_t *c)
{
    return &SESSION(c)->resp;
}

/* --- Responses ----------------------------------------------------------- */

static const unsigned char token_char[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1,
    ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

static int name_is(const char *name, size_t nlen, const char *lower)
{
    size_t n = strlen(lower);
    if (n != nlen)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        if (ch >= 'A' && ch <= 'Z')
            ch = (char)(ch + 32);
        if (ch != lower[i])
            return 0;
    }
    return 1;
}

int ymo_http_has_token(const char *v, size_t len, const char *token)
{
    size_t tl = strlen(token);
    size_t i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t start = i;
        while (i < len && v[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t'))
            end--;
        if (end - start == tl && name_is(v + start, tl, token))
            return 1;
    }
    return 0;
}

/* A response's Content-Length: 1 to 19 digits, with OWS around them. */
static int response_length(const char *v, size_t n, uint64_t *out)
{
    while (n > 0 && (v[0] == ' ' || v[0] == '\t')) {
        v++;
        n--;
    }
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (n == 0 || n > 19)
        return YMO_E_BAD_CONTENT_LENGTH;
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if ((unsigned)(v[i] - '0') > 9u)
            return YMO_E_BAD_CONTENT_LENGTH;
        x = x * 10 + (uint64_t)(v[i] - '0');
    }
    *out = x;
    return 0;
}

/* A control character other than HTAB: never in a field value or reason. */
static int is_ctl(unsigned char ch)
{
    return (ch < 0x20 && ch != '\t') || ch == 0x7f;
}

int ymo_http_check_field(const char *name, size_t nlen, const char *value, size_t vlen)
{
    if (nlen == 0)
        return YMO_E_BAD_HEADER_NAME;
    for (size_t i = 0; i < nlen; i++)
        if (!token_char[(unsigned char)name[i]])
            return YMO_E_BAD_HEADER_NAME;
    /* RFC 9110 5.5: no control character but HTAB in a field value; CR or
     * LF would let the application split the response. */
    for (size_t i = 0; i < vlen; i++)
        if (is_ctl((unsigned char)value[i]))
            return YMO_E_BAD_HEADER_VALUE;
    uint64_t len;
    if (nlen == 14 && name_is(name, nlen, "content-length"))
        return response_length(value, vlen, &len);
    return 0;
}

int ymo_http_response_begin_reason(ymo_conn_t *c, int status, const char *reason, size_t len)
{
    session_t *ss = SESSION(c);
    ymo_http_response_t *r = &ss->resp;
    if (r->flags & YMO_RESP_STARTED)
        return YMO_E_STATE;
    if (status < 100 || status > 999)
        return YMO_E_STATE;
    /* RFC 9112 4: reason-phrase = *( HTAB / SP / VCHAR / obs-text ) */
    for (size_t i = 0; i < len; i++)
        if (is_ctl((unsigned char)reason[i]))
            return YMO_E_BAD_HEADER_VALUE;
    /* "HTTP/1.1 200 " reason CRLF */
    char *p = ymo_outq_reserve(&c->out, 13 + len + 2);
    if (p == NULL)
        return YMO_E_NOMEM;
    /* RFC 9110 6.2: the highest version we conform to within the
     * request's major version; what a 1.0 client may receive is decided
     * by its version all the same (no chunked coding, keep-alive asked). */
    memcpy(p, "HTTP/1.1", 8);
    p[8] = ' ';
    p[9] = (char)('0' + status / 100);
    p[10] = (char)('0' + status / 10 % 10);
    p[11] = (char)('0' + status % 10);
    p[12] = ' ';
    memcpy(p + 13, reason, len);
    p[13 + len] = '\r';
    p[14 + len] = '\n';
    r->status = status;
    r->flags = YMO_RESP_STARTED;
    if ((ss->parser.flags & YMO_HTTP_F_HEAD) || status < 200 || status == 204 || status == 304)
        r->flags |= YMO_RESP_NO_BODY;
    return 0;
}

int ymo_http_response_begin(ymo_conn_t *c, int status)
{
    const char *reason = ymo_http_reason(status);
    return ymo_http_response_begin_reason(c, status, reason, strlen(reason));
}

int ymo_http_response_header(ymo_conn_t *c, const char *name, size_t nlen,
                             const char *value, size_t vlen)
{
    ymo_http_response_t *r = &SESSION(c)->resp;
    if (!(r->flags & YMO_RESP_STARTED) || (r->flags & YMO_RESP_HEAD_DONE))
        return YMO_E_STATE;
    int bad = ymo_http_check_field(name, nlen, value, vlen);
    if (bad < 0)
        return bad;
    if (name_is(name, nlen, "connection")) {
        if (ymo_http_has_token(value, vlen, "close"))
            r->flags |= YMO_RESP_CLOSE;
        return 0;
    }
    if (name_is(name, nlen, "transfer-encoding"))
        return YMO_E_BAD_TRANSFER_ENCODING;
    /* RFC 9110 7.6.1: hop-by-hop fields describe this connection, which is
     * the server's to manage: dropped. */
    if (name_is(name, nlen, "keep-alive") || name_is(name, nlen, "te")
        || name_is(name, nlen, "proxy-connection")
        || (name_is(name, nlen, "upgrade") && r->status != 426))   /* RFC 9110 15.5.22 */
        return 0;
    if (name_is(name, nlen, "content-length")) {
        uint64_t v;
        if ((r->flags & YMO_RESP_APP_LENGTH) || response_length(value, vlen, &v) < 0)
            return YMO_E_BAD_CONTENT_LENGTH;
        if (r->status < 200 || r->status == 204)
            return 0;   /* RFC 9110 8.6: never in a 1xx or 204 response */
        r->flags |= YMO_RESP_APP_LENGTH | YMO_RESP_HAS_LENGTH;
        r->content_length = v;
    } else if (name_is(name, nlen, "date")) {
        /* RFC 9110 5.3: one Date field, so the application's replaces ours. */
        r->flags |= YMO_RESP_APP_DATE;
    } else if (name_is(name, nlen, "server")) {
        r->flags |= YMO_RESP_APP_SERVER;
    }
    char *p = ymo_outq_reserve(&c->out, nlen + vlen + 4);
    if (p == NULL)
        return YMO_E_NOMEM;
    memcpy(p, name, nlen);
    p += nlen;
    *p++ = ':';
    *p++ = ' ';
    memcpy(p, value, vlen);
    p += vlen;
    *p++ = '\r';
    *p = '\n';
    return 0;
}

/* Digits of v in base 10 or 16 (lowercase) at p; returns their count. The
 * response path formats numbers this way rather than with printf. */
static size_t format_uint(char *p, uint64_t v, unsigned base)
{
    char tmp[24];
    size_t n = 0;
    do {
        unsigned d = (unsigned)(v % base);
        tmp[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        p[i] = tmp[n - 1 - i];
    return n;
}

static size_t append(char *buf, size_t n, const char *s)
{
    size_t len = strlen(s);
    memcpy(buf + n, s, len);
    return n + len;
}

int ymo_http_response_end_head(ymo_conn_t *c, int64_t known_len)
{
    session_t *ss = SESSION(c);
    ymo_http_response_t *r = &ss->resp;
    ymo_server_t *s = c->server;
    if (!(r->flags & YMO_RESP_STARTED) || (r->flags & YMO_RESP_HEAD_DONE))
        return YMO_E_STATE;

    int minor = ss->parser.version_minor;
    int keepalive = (ss->parser.flags & YMO_HTTP_F_KEEPALIVE) && !(r->flags & YMO_RESP_CLOSE)
                    && !(c->flags & YMO_CONN_DRAINING) && s->cfg.keepalive_timeout > 0;
    /* A request whose body was never read leaves the connection unusable. */
    if (!(ss->flags & SF_BODY_DONE))
        keepalive = 0;
    char buf[128];
    size_t n = 0;

    if (r->status >= 200 && r->status != 204 && r->status != 304
        && !(r->flags & YMO_RESP_HAS_LENGTH)) {
        /* A HEAD answered with no body says nothing of the GET's length
         * (RFC 9110 9.3.2): an empty body is not a length of 0 there. */
        if (known_len == 0 && (ss->parser.flags & YMO_HTTP_F_HEAD))
            known_len = -1;
        if (known_len >= 0) {
            r->flags |= YMO_RESP_HAS_LENGTH;
            r->content_length = (uint64_t)known_len;
            n = append(buf, n, "Content-Length: ");
            n += format_uint(buf + n, (uint64_t)known_len, 10);
            n = append(buf, n, "\r\n");
        } else if (r->flags & YMO_RESP_NO_BODY) {
            /* HEAD of a streamed body: nothing to frame. */
        } else if (minor >= 1) {
            r->flags |= YMO_RESP_CHUNKED;
            n = append(buf, n, "Transfer-Encoding: chunked\r\n");
        } else {
            /* HTTP/1.0 without a length: the end of the connection ends the
             * body (RFC 9112 6.3). */
            keepalive = 0;
        }
    }
    if (!keepalive) {
        r->flags |= YMO_RESP_CLOSE;
        if (minor >= 1)
            n = append(buf, n, "Connection: close\r\n");
    } else if (minor == 0) {
        n = append(buf, n, "Connection: keep-alive\r\n");
    }
    size_t dlen = 0;
    const char *date = (r->flags & YMO_RESP_APP_DATE) ? "" : ymo_server_date(s, &dlen);
    static const char server_line[] = "Server: yimmo\r\n";
    size_t slen = (r->flags & YMO_RESP_APP_SERVER) ? 0 : sizeof(server_line) - 1;
    char *p = ymo_outq_reserve(&c->out, n + dlen + slen + 2);
    if (p == NULL)
        return YMO_E_NOMEM;
    memcpy(p, server_line, slen);
    p += slen;
    memcpy(p, date, dlen);
    p += dlen;
    memcpy(p, buf, n);
    p += n;
    p[0] = '\r';
    p[1] = '\n';
    r->flags |= YMO_RESP_HEAD_DONE;
    return 0;
}

/* Bodies up to this size are copied next to the head: one iovec. */
#define COPY_MAX 8192

static int queue_bytes(ymo_conn_t *c, const char *data, size_t len, void *ref)
{
    if (ref == NULL)
        return ymo_outq_copy(&c->out, data, len);
    if (len <= COPY_MAX) {
        int rc = ymo_outq_copy(&c->out, data, len);
        c->server->hooks.release(c->server, ref);
        return rc;
    }
    return ymo_outq_ref(&c->out, data, len, ref);
}

int ymo_http_response_body(ymo_conn_t *c, const char *data, size_t len, void *ref)
{
    ymo_http_response_t *r = &SESSION(c)->resp;
    int rc = 0;
    if (!(r->flags & YMO_RESP_HEAD_DONE) || (r->flags & YMO_RESP_FINISHED)) {
        rc = YMO_E_STATE;
        goto drop;
    }
    if (len == 0)
        goto drop;
    if (r->flags & YMO_RESP_NO_BODY)
        goto drop;      /* dropped, not sent: the access log counts 0 */
    if ((r->flags & YMO_RESP_HAS_LENGTH) && r->sent + len > r->content_length) {
        /* More than declared: send what fits and close after it. */
        size_t fit = (size_t)(r->content_length - r->sent);
        r->flags |= YMO_RESP_CLOSE;
        rc = YMO_E_BAD_CONTENT_LENGTH;
        if (fit == 0)
            goto drop;
        r->sent += fit;
        int q = ymo_outq_copy(&c->out, data, fit);
        if (ref != NULL)
            c->server->hooks.release(c->server, ref);
        return q < 0 ? q : rc;
    }
    r->sent += len;
    if (r->flags & YMO_RESP_CHUNKED) {
        char size[24];
        size_t n = format_uint(size, len, 16);
        size[n++] = '\r';
        size[n++] = '\n';
        if ((rc = ymo_outq_copy(&c->out, size, (size_t)n)) < 0)
            goto drop;
        if ((rc = queue_bytes(c, data, len, ref)) < 0)
            return rc;
        return ymo_outq_copy(&c->out, "\r\n", 2);
    }
    return queue_bytes(c, data, len, ref);
drop:
    if (ref != NULL)
        c->server->hooks.release(c->server, ref);
    return rc;
}

int ymo_http_response_file(ymo_conn_t *c, int fd, uint64_t off, size_t len)
{
    ymo_http_response_t *r = &SESSION(c)->resp;
    int rc;
    if (!(r->flags & YMO_RESP_HEAD_DONE) || (r->flags & YMO_RESP_FINISHED)) {
        rc = YMO_E_STATE;
        goto drop;
    }
    if (r->flags & YMO_RESP_NO_BODY) {
        rc = 0;
        goto drop;
    }
    rc = 0;
    if ((r->flags & YMO_RESP_HAS_LENGTH) && r->sent + len > r->content_length) {
        len = (size_t)(r->content_length - r->sent);
        r->flags |= YMO_RESP_CLOSE;
        rc = YMO_E_BAD_CONTENT_LENGTH;
    }
    if (len == 0)
        goto drop;
    r->sent += len;
    if (r->flags & YMO_RESP_CHUNKED) {
        char size[24];
        size_t n = format_uint(size, len, 16);
        size[n++] = '\r';
        size[n++] = '\n';
        int q = ymo_outq_copy(&c->out, size, (size_t)n);
        if (q < 0) {
            close(fd);
            return q;
        }
        if ((q = ymo_outq_file(&c->out, fd, off, len)) < 0)
            return q;
        q = ymo_outq_copy(&c->out, "\r\n", 2);
        return q < 0 ? q : rc;
    }
    int q = ymo_outq_file(&c->out, fd, off, len);
    return q < 0 ? q : rc;
drop:
    close(fd);
    return rc;
}

int ymo_http_response_finish(ymo_conn_t *c)
{
    ymo_http_response_t *r = &SESSION(c)->resp;
    if (!(r->flags & YMO_RESP_HEAD_DONE) || (r->flags & YMO_RESP_FINISHED))
        return YMO_E_STATE;
    r->flags |= YMO_RESP_FINISHED;
    if ((r->flags & YMO_RESP_CHUNKED) && !(r->flags & YMO_RESP_NO_BODY))
        return ymo_outq_copy(&c->out, "0\r\n\r\n", 5);
    if ((r->flags & YMO_RESP_HAS_LENGTH) && !(r->flags & YMO_RESP_NO_BODY)
        && r->sent != r->content_length) {
        /* Shorter than declared: the peer can only tell by the close. */
        r->flags |= YMO_RESP_CLOSE;
        return YMO_E_BAD_CONTENT_LENGTH;
    }
    return 0;
}
