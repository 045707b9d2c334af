/*
 * Connections: reading into the input buffer, writing the output queue with
 * writev, the connection's timer, lingering and deferred close.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <time.h>
#include <unistd.h>

#include "core/core_internal.h"

/* --- The plain transport ------------------------------------------------ */

static ssize_t plain_read(ymo_conn_t *c, char *buf, size_t len)
{
    ssize_t n;
    do
        n = read(c->fd, buf, len);
    while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

static ssize_t plain_writev(ymo_conn_t *c, const struct iovec *iov, int iovcnt)
{
    /* send/sendmsg rather than write/writev: MSG_NOSIGNAL keeps a peer's
     * reset from raising SIGPIPE in a process that did not ignore it. One
     * buffer (most responses) skips the kernel's msghdr and iovec import. */
    ssize_t n;
    if (iovcnt == 1) {
        do
            n = send(c->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
        while (n < 0 && errno == EINTR);
        return n < 0 ? -errno : n;
    }
    struct msghdr msg = {0};
    msg.msg_iov = (struct iovec *)iov;
    msg.msg_iovlen = (size_t)iovcnt;
    do
        n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

static void plain_shutdown(ymo_conn_t *c)
{
    shutdown(c->fd, SHUT_WR);
}

static ssize_t plain_sendfile(ymo_conn_t *c, int fd, uint64_t off, size_t len)
{
    off_t o = (off_t)off;
    ssize_t n;
    do
        n = sendfile(c->fd, fd, &o, len);
    while (n < 0 && errno == EINTR);
    if (n == 0 && len > 0)
        return -EIO;    /* the file is shorter than it was said to be */
    return n < 0 ? -errno : n;
}

const ymo_transport_t ymo__plain_transport = {
    .read = plain_read,
    .writev = plain_writev,
    .shutdown = plain_shutdown,
    .sendfile = plain_sendfile,
};

/* One write of what is queued: the memory buckets up to the next file by
 * writev, or the file at the front by sendfile. Bytes written or -errno. */
static ssize_t write_some(ymo_conn_t *c)
{
    ymo_bucket_t *b = ymo__outq_first(&c->out);
    ssize_t w;
    if (b != NULL && b->fd >= 0) {
        size_t len = b->len > (1u << 20) ? (1u << 20) : b->len;
        if (c->transport->sendfile != NULL) {
            w = c->transport->sendfile(c, b->fd, b->base, len);
        } else {
            char buf[16384];
            if (len > sizeof(buf))
                len = sizeof(buf);
            w = pread(b->fd, buf, len, (off_t)b->base);
            if (w == 0)
                return -EIO;
            if (w < 0)
                return -errno;
            struct iovec iov = {.iov_base = buf, .iov_len = (size_t)w};
            w = c->transport->writev(c, &iov, 1);
        }
    } else {
        struct iovec iov[YMO_IOV_MAX];
        int n = ymo__outq_iov(&c->out, iov, YMO_IOV_MAX);
        w = c->transport->writev(c, iov, n);
    }
    if (w > 0)
        ymo__outq_consume(&c->out, (size_t)w, c->server);
    return w;
}

/* --- Addresses --------------------------------------------------------- */

size_t ymo_sockaddr_host(const struct sockaddr_storage *ss, char *host, int *port)
{
    if (ss->ss_family == AF_INET) {
        /* Dotted quad by hand: inet_ntop goes through printf. */
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        const unsigned char *b = (const unsigned char *)&a->sin_addr;
        size_t n = 0;
        for (int i = 0; i < 4; i++) {
            unsigned v = b[i];
            if (v >= 100)
                host[n++] = (char)('0' + v / 100);
            if (v >= 10)
                host[n++] = (char)('0' + v / 10 % 10);
            host[n++] = (char)('0' + v % 10);
            if (i < 3)
                host[n++] = '.';
        }
        host[n] = '\0';
        *port = ntohs(a->sin_port);
        return n;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        if (inet_ntop(AF_INET6, &a->sin6_addr, host, INET6_ADDRSTRLEN) == NULL)
            host[0] = '\0';
        *port = ntohs(a->sin6_port);
        return strlen(host);
    }
    host[0] = '\0';
    *port = 0;
    return 0;
}

const char *ymo_conn_peer_host(ymo_conn_t *c, size_t *len, int *port)
{
    int p = 0;
    if (c->peer_host_len == 0)
        c->peer_host_len = (uint8_t)ymo_sockaddr_host(&c->peer, c->peer_host, &p);
    else if (c->peer.ss_family == AF_INET)
        p = ntohs(((const struct sockaddr_in *)&c->peer)->sin_port);
    else if (c->peer.ss_family == AF_INET6)
        p = ntohs(((const struct sockaddr_in6 *)&c->peer)->sin6_port);
    *len = c->peer_host_len;
    *port = p;
    return c->peer_host;
}

/* While a worker thread owns a connection, the loop's watchers and lists
 * are not touched from that thread: intents are recorded in flags and
 * carried out at check-in, on the loop thread. */
#define CHECKED_OUT(c) ((c)->flags & YMO_CONN_CHECKED_OUT)

/* --- Input ------------------------------------------------------------- */

/* Input buffers leave idle connections (which then cost no buffer) for a
 * small server-wide cache, so that busy connections do not malloc, grow and
 * free one per request; large bodies would otherwise pay mmap and page
 * faults each time. The cache is the loop thread's: a connection a worker
 * thread owns neither takes from it nor gives to it. */
#define SPARE_BUF_MAX (1u << 20)
/* The most one wakeup reads ahead of the protocol, and so the most room a
 * connection's read hint asks for. */
#define READ_HINT_MAX (256u << 10)

int ymo_conn_reserve(ymo_conn_t *c, size_t n)
{
    if (c->in.cap - c->in.len >= n)
        return 0;
    ymo_server_t *s = c->server;
    if (c->in.data == NULL && s->nspare_bufs > 0 && !CHECKED_OUT(c)) {
        /* The largest spare: they are kept sorted by size. */
        c->in = s->spare_bufs[--s->nspare_bufs];
        c->in.len = 0;
        if (c->in.cap >= n)
            return 0;
    }
    size_t ncap = c->in.cap ? c->in.cap : 4096;
    while (ncap - c->in.len < n)
        ncap *= 2;
    char *nd;
    if (c->in.len == 0) {
        /* Nothing to keep (a spare too small, say): realloc would copy it. */
        free(c->in.data);
        c->in.data = NULL;
        c->in.cap = 0;
        nd = malloc(ncap);
    } else {
        nd = realloc(c->in.data, ncap);
    }
    if (nd == NULL)
        return YMO_E_NOMEM;
    c->in.data = nd;
    c->in.cap = ncap;
    return 0;
}

void ymo__conn_shrink_input(ymo_conn_t *c, size_t cap)
{
    if (c->in.cap <= cap || c->in.len > cap || CHECKED_OUT(c))
        return;
    char *nd = realloc(c->in.data, cap);
    if (nd != NULL) {
        c->in.data = nd;
        c->in.cap = cap;
    }
}

void ymo__conn_dirty(ymo_conn_t *c)
{
    ymo_server_t *s = c->server;
    c->flags |= YMO_CONN_DIRTY;
    c->next_dirty = s->dirty;
    s->dirty = c;
    ymo__server_keep_polling(s);
}

void ymo_conn_release_input(ymo_conn_t *c)
{
    if (c->in.len != 0 || c->in.data == NULL || CHECKED_OUT(c))
        return;
#ifndef YMO_DEBUG
    ymo_server_t *s = c->server;
    if (c->in.cap <= SPARE_BUF_MAX) {
        uint32_t n = s->nspare_bufs;
        if (n == sizeof(s->spare_bufs) / sizeof(s->spare_bufs[0])) {
            /* Full: drop the smallest if this one is larger. */
            if (s->spare_bufs[0].cap >= c->in.cap)
                goto drop;
            free(s->spare_bufs[0].data);
            memmove(&s->spare_bufs[0], &s->spare_bufs[1], (n - 1) * sizeof(ymo_buf_t));
            n--;
        }
        uint32_t i = n;
        while (i > 0 && s->spare_bufs[i - 1].cap > c->in.cap) {
            s->spare_bufs[i] = s->spare_bufs[i - 1];
            i--;
        }
        s->spare_bufs[i] = c->in;
        s->nspare_bufs = n + 1;
        c->in.data = NULL;
        c->in.cap = 0;
        return;
    }
drop:
#endif
    free(c->in.data);
    c->in.data = NULL;
    c->in.cap = 0;
}

/* Input the transport has already taken from the socket (TLS records read
 * ahead) raises no readiness event: deliver it in the next iteration. Not
 * after a read that returned -EAGAIN: what is left then is an incomplete
 * record, and the socket announces the rest. */
static void feed_pending(ymo_conn_t *c)
{
    if (!(c->flags & YMO_CONN_READING))
        return;
    if ((c->flags & YMO_CONN_EOF_SEEN)
        || (c->transport->pending != NULL && c->transport->pending(c) > 0))
        ev_feed_event(c->server->loop, &c->rio, EV_READ);
}

void ymo_conn_read_start(ymo_conn_t *c)
{
    if (CHECKED_OUT(c))
        return;
    if (!(c->flags & (YMO_CONN_READING | YMO_CONN_CLOSED | YMO_CONN_EOF))) {
        ev_io_start(c->server->loop, &c->rio);
        c->flags |= YMO_CONN_READING;
        feed_pending(c);
    }
}

void ymo_conn_read_stop(ymo_conn_t *c)
{
    if (CHECKED_OUT(c))
        return;
    if (c->flags & YMO_CONN_READING) {
        /* A write that waits for input keeps the watcher. */
        if (!(c->flags & YMO_CONN_WRITE_WANTS_READ))
            ev_io_stop(c->server->loop, &c->rio);
        c->flags &= ~YMO_CONN_READING;
    }
}

void ymo_conn_check_out(ymo_conn_t *c)
{
    /* A read that waited for POLLOUT is the worker's to retry now: the
     * loop's watcher must not read on this thread meanwhile. */
    if (c->flags & YMO_CONN_READ_WANTS_WRITE) {
        c->flags &= ~YMO_CONN_READ_WANTS_WRITE;
        if (!(c->flags & YMO_CONN_WRITING))
            ev_io_stop(c->server->loop, &c->wio);
    }
    c->flags |= YMO_CONN_CHECKED_OUT;
}

void ymo_conn_timer(ymo_conn_t *c, double seconds)
{
    if (c->flags & (YMO_CONN_CLOSED | YMO_CONN_CHECKED_OUT))
        return;
    c->flags &= ~YMO_CONN_SEND_TIMER;
    if (seconds <= 0) {
        ev_timer_stop(c->server->loop, &c->timer);
        return;
    }
    c->timer.repeat = seconds;
    ev_timer_again(c->server->loop, &c->timer);
}

/* Read and drop input until EOF: the last response is out and the socket is
 * half closed; closing with unread input would reset the connection and
 * could destroy that response before the peer reads it. */
static void linger_read(ymo_conn_t *c)
{
    char scratch[4096];
    for (int i = 0; i < 16; i++) {
        ssize_t n = c->transport->read(c, scratch, sizeof(scratch));
        if (n == -EAGAIN)
            return;
        if (n <= 0) {
            ymo_conn_close(c);
            return;
        }
    }
}

static void on_read(struct ev_loop *loop, ev_io *w, int revents)
{
    ymo_conn_t *c = ymo_container_of(w, ymo_conn_t, rio);
    ymo_server_t *s = c->server;

    if (c->flags & YMO_CONN_WRITE_WANTS_READ) {
        /* The transport's write waited for this input (TLS). */
        c->flags &= ~YMO_CONN_WRITE_WANTS_READ;
        if (!(c->flags & YMO_CONN_READING))
            ev_io_stop(loop, &c->rio);
        ymo_conn_flush(c);
        if (c->flags & YMO_CONN_CLOSED)
            return;
        if (!(c->flags & YMO_CONN_READING))
            return;
    }
    if (c->flags & YMO_CONN_LINGERING) {
        linger_read(c);
        return;
    }
    if (c->flags & YMO_CONN_EOF_SEEN) {
        /* The EOF found behind data, once the protocol wants input again:
         * everything before it has been taken (a WebSocket takes one
         * message per pass). */
        c->flags |= YMO_CONN_EOF;
        ymo_conn_read_stop(c);
        c->proto->on_eof(c, 0);
        return;
    }
    /* Room for as much as the last wakeup brought: a peer streaming large
     * messages or bodies is read in one call instead of a growing few. */
    size_t want = c->read_hint > s->cfg.read_size ? c->read_hint : s->cfg.read_size;
    size_t total = 0;
    int got = 0, again = 0;
    for (int i = 0; i < 4; i++) {
        if (ymo_conn_reserve(c, want) < 0) {
            ymo__log(s, YMO_LOG_ERROR, "out of memory reading from a connection");
            ymo_conn_close(c);
            return;
        }
        size_t room = c->in.cap - c->in.len;
        ssize_t n = c->transport->read(c, c->in.data + c->in.len, room);
        if (n > 0) {
            c->in.len += (size_t)n;
            total += (size_t)n;
            got = 1;
            if ((size_t)n < room || total >= READ_HINT_MAX)
                break;
            continue;
        }
        if (n == -EAGAIN) {
            if (c->flags & YMO_CONN_READ_WANTS_WRITE) {
                /* Nothing can be read until the socket takes the
                 * transport's own output (TLS answering a flood of
                 * KeyUpdates into a full send buffer): waiting for input
                 * meanwhile would spin on the peer's unread records. */
                if (!(c->flags & YMO_CONN_WRITE_WANTS_READ))
                    ev_io_stop(loop, &c->rio);
                ev_io_start(loop, &c->wio);
            }
            again = 1;
            break;
        }
        if (n == 0 && got) {
            /* EOF right behind data: the data now, the EOF when the
             * protocol reads again (feed_pending below, or its next
             * read_start). Not at once: it may not have taken all of it. */
            c->flags |= YMO_CONN_EOF_SEEN;
            break;
        }
        /* EOF or a failed read: let the protocol see what arrived first. */
        if (got)
            c->proto->on_data(c);
        if (c->flags & YMO_CONN_CLOSED)
            return;
        c->flags |= YMO_CONN_EOF;
        ymo_conn_read_stop(c);
        c->proto->on_eof(c, n == 0 ? 0 : (int)n);
        return;
    }
    c->read_hint = total > s->cfg.read_size ? (uint32_t)(total < READ_HINT_MAX ? total : READ_HINT_MAX) : 0;
    if (got) {
        s->last_input = ev_now(loop);
        c->proto->on_data(c);
    } else {
        ymo_conn_release_input(c);
    }
    if (!again && !(c->flags & YMO_CONN_CLOSED))
        feed_pending(c);
}

/* --- Output ------------------------------------------------------------ */

static void linger_start(ymo_conn_t *c)
{
    c->flags |= YMO_CONN_LINGERING;
    c->flags &= ~YMO_CONN_CLOSE_AFTER_FLUSH;
    c->transport->shutdown(c);
    if (c->flags & (YMO_CONN_EOF | YMO_CONN_EOF_SEEN)) {
        ymo_conn_close(c);
        return;
    }
    /* Input already buffered is dropped with the connection. */
    c->in.len = 0;
    ymo_conn_read_start(c);
    ymo_conn_timer(c, c->server->cfg.linger_timeout);
}

int ymo_conn_flush(ymo_conn_t *c)
{
    ymo_server_t *s = c->server;

    if (c->flags & YMO_CONN_CLOSED)
        return YMO_E_CLOSED;
    if (CHECKED_OUT(c))
        return 0;
    while (c->out.bytes > 0) {
        ssize_t w = write_some(c);
        if (w >= 0)
            continue;
        if (w == -EAGAIN) {
            if (c->flags & YMO_CONN_WRITE_WANTS_READ) {
                /* Not writable until input arrives: on_read flushes. */
                ev_io_start(s->loop, &c->rio);
            } else if (!(c->flags & YMO_CONN_WRITING)) {
                ev_io_start(s->loop, &c->wio);
                c->flags |= YMO_CONN_WRITING;
            }
            ymo_conn_timer(c, s->cfg.send_timeout);
            c->flags |= YMO_CONN_SEND_TIMER;
            return 0;
        }
        ymo__log(s, YMO_LOG_DEBUG, "write failed: %s", ymo_strerror((int)w));
        ymo_conn_close(c);
        return (int)w;
    }
    if (c->flags & YMO_CONN_WRITING) {
        ev_io_stop(s->loop, &c->wio);
        c->flags &= ~YMO_CONN_WRITING;
    }
    if (c->flags & YMO_CONN_CLOSE_AFTER_FLUSH)
        linger_start(c);
    else
        c->proto->on_drained(c);
    return 0;
}

void ymo_conn_close_after_flush(ymo_conn_t *c)
{
    if (c->flags & (YMO_CONN_CLOSED | YMO_CONN_LINGERING))
        return;
    c->flags |= YMO_CONN_CLOSE_AFTER_FLUSH;
    if (CHECKED_OUT(c))
        return;
    ymo_conn_read_stop(c);
    if (c->out.bytes == 0)
        linger_start(c);
}

static void on_write(struct ev_loop *loop, ev_io *w, int revents)
{
    ymo_conn_t *c = ymo_container_of(w, ymo_conn_t, wio);
    if (c->flags & YMO_CONN_READ_WANTS_WRITE) {
        /* The transport's read waited for this (TLS). */
        c->flags &= ~YMO_CONN_READ_WANTS_WRITE;
        if (!(c->flags & YMO_CONN_WRITING))
            ev_io_stop(loop, w);
        if (c->flags & YMO_CONN_READING)
            ev_io_start(loop, &c->rio);
        on_read(loop, &c->rio, EV_READ);
        if ((c->flags & YMO_CONN_CLOSED) || !(c->flags & YMO_CONN_WRITING))
            return;
    }
    ymo_conn_flush(c);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    ymo_conn_t *c = ymo_container_of(w, ymo_conn_t, timer);
    if (c->flags & YMO_CONN_LINGERING) {
        ymo_conn_close(c);
        return;
    }
    if (c->out.bytes > 0 && (c->flags & YMO_CONN_WRITING)) {
        /* No write made progress for send_timeout seconds. */
        ymo__log(c->server, YMO_LOG_DEBUG, "send timeout, closing connection");
        ymo_conn_close(c);
        return;
    }
    c->proto->on_timeout(c);
}

/* --- Blocking waits on one connection ----------------------------------- */

static double monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Wait until fd is ready, at most timeout seconds: 0, YMO_E_TIMEOUT or
 * -errno; with wakes, 1 as soon as the server was asked to stop (a blocking
 * WebSocket says goodbye then). The wait goes in short slices so that a
 * stop() with a deadline, asked for meanwhile, also bounds it: the loop
 * thread is blocked here and cannot see the request itself. */
static int poll_one(ymo_server_t *s, int fd, short events, double timeout, int wakes)
{
    double now = monotonic();
    double deadline = timeout < 0 ? -1 : now + timeout;
    double stop_deadline = -1;
    for (;;) {
        if (s->stop_requested && wakes)
            return 1;
        if (s->stop_requested && s->stop_timeout >= 0 && stop_deadline < 0)
            stop_deadline = now + s->stop_timeout;
        double until = deadline;
        if (stop_deadline >= 0 && (until < 0 || stop_deadline < until))
            until = stop_deadline;
        double slice = 0.1;
        if (until >= 0 && until - now < slice)
            slice = until - now;
        if (slice < 0)
            slice = 0;
        struct pollfd pfd = {.fd = fd, .events = events};
        int r = poll(&pfd, 1, (int)(slice * 1000.0 + 0.999));
        if (r < 0 && errno != EINTR)
            return -errno;
        if (r > 0)
            return 0;
        now = monotonic();
        if (until >= 0 && now >= until)
            return YMO_E_TIMEOUT;
    }
}

int ymo_conn_write_now(ymo_conn_t *c)
{
    while (c->out.bytes > 0 && !(c->flags & YMO_CONN_CLOSED)) {
        ssize_t w = write_some(c);
        if (w == -EAGAIN)
            return 0;
        if (w < 0)
            return (int)w;
    }
    return 0;
}

int ymo_conn_flush_sync(ymo_conn_t *c, double timeout)
{
    while (c->out.bytes > 0) {
        if (c->flags & YMO_CONN_CLOSED)
            return YMO_E_CLOSED;
        ssize_t w = write_some(c);
        if (w >= 0)
            continue;
        if (w != -EAGAIN)
            return (int)w;
        short ev = (c->flags & YMO_CONN_WRITE_WANTS_READ) ? POLLIN : POLLOUT;
        c->flags &= ~YMO_CONN_WRITE_WANTS_READ;
        int r = poll_one(c->server, c->fd, ev, timeout, 0);
        if (r < 0)
            return r;
    }
    return 0;
}

int ymo_conn_read_sync(ymo_conn_t *c, double timeout)
{
    if (c->flags & YMO_CONN_EOF_SEEN)
        c->flags |= YMO_CONN_EOF;
    if (c->flags & (YMO_CONN_CLOSED | YMO_CONN_EOF))
        return YMO_E_CLOSED;
    for (;;) {
        if (ymo_conn_reserve(c, c->server->cfg.read_size) < 0)
            return YMO_E_NOMEM;
        ssize_t n = c->transport->read(c, c->in.data + c->in.len, c->in.cap - c->in.len);
        if (n > 0) {
            c->in.len += (size_t)n;
            return 0;
        }
        if (n == 0) {
            c->flags |= YMO_CONN_EOF;
            return YMO_E_CLOSED;
        }
        if (n != -EAGAIN)
            return (int)n;
        short ev = (c->flags & YMO_CONN_READ_WANTS_WRITE) ? POLLOUT : POLLIN;
        c->flags &= ~YMO_CONN_READ_WANTS_WRITE;
        int r = poll_one(c->server, c->fd, ev, timeout, (c->flags & YMO_CONN_STOP_WAKES) != 0);
        if (r != 0)
            return r;
    }
}

/* --- Lifecycle --------------------------------------------------------- */

ymo_conn_t *ymo__conn_new(ymo_server_t *s, int fd, const struct sockaddr *peer,
                          socklen_t peer_len)
{
    ymo_conn_t *c = s->free_conns;
    if (c != NULL) {
        s->free_conns = c->next;
        s->nfree--;
    } else {
        c = malloc(sizeof(*c));
        if (c == NULL) {
            close(fd);
            return NULL;
        }
    }
    memset(c, 0, sizeof(*c));
    c->server = s;
    c->fd = fd;
    c->id = ++s->next_id;
    c->transport = &ymo__plain_transport;
    if (peer_len > sizeof(c->peer))
        peer_len = sizeof(c->peer);
    memcpy(&c->peer, peer, peer_len);
    c->peer_len = peer_len;
    ev_io_init(&c->rio, on_read, fd, EV_READ);
    ev_io_init(&c->wio, on_write, fd, EV_WRITE);
    ev_init(&c->timer, on_timer);

    c->next = s->conns;
    if (s->conns != NULL)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;

    if (ymo__http_attach(c) < 0) {
        ymo_conn_close(c);
        return NULL;
    }
    return c;
}

void ymo_conn_close(ymo_conn_t *c)
{
    ymo_server_t *s = c->server;
    if (c->flags & YMO_CONN_CLOSED)
        return;
    c->flags |= YMO_CONN_CLOSED;
    if (CHECKED_OUT(c)) {
        c->flags |= YMO_CONN_CLOSE_PENDING;
        return;
    }
    ev_io_stop(s->loop, &c->rio);
    ev_io_stop(s->loop, &c->wio);
    ev_timer_stop(s->loop, &c->timer);
    if (c->transport->free != NULL)
        c->transport->free(c);
    c->transport = &ymo__plain_transport;
    close(c->fd);
    c->fd = -1;
    if (c->proto != NULL && c->proto->on_close != NULL)
        c->proto->on_close(c);

    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
    s->nconns--;
    ymo__server_conn_closed(s);

    c->next_closing = s->closing;
    s->closing = c;
    if (s->stopping && s->nconns == 0)
        ev_break(s->loop, EVBREAK_ONE);
}

/* Connections are freed here, in the loop's prepare phase, never inside
 * their own callbacks. */
void ymo__conn_reap(ymo_server_t *s)
{
    ymo_conn_t *held = NULL;
    while (s->closing != NULL) {
        ymo_conn_t *c = s->closing;
        s->closing = c->next_closing;
        if (!s->freeing
            && ((c->flags & (YMO_CONN_READY | YMO_CONN_DIRTY))
                || (c->proto != NULL && c->proto->busy != NULL && c->proto->busy(c)))) {
            /* Still on the ready or flush list, or its exchange is cleaned
             * up by the next dispatch: freed after that. */
            c->next_closing = held;
            held = c;
            continue;
        }
        if (c->proto != NULL && c->proto->on_free != NULL)
            c->proto->on_free(c);
        ymo__outq_free(&c->out, s);
        free(c->in.data);
#ifdef YMO_DEBUG
        /* Plain free under the sanitizers keeps use-after-free visible. */
        free(c);
#else
        if (s->nfree < 256) {
            c->next = s->free_conns;
            s->free_conns = c;
            s->nfree++;
        } else {
            free(c);
        }
#endif
    }
    s->closing = held;
}
