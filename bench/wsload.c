/* wsload: a small WebSocket echo load generator for bench/ws.py.
 *
 *   cc -O2 -o build/wsload bench/wsload.c
 *   wsload HOST PORT CONNECTIONS SIZE SECONDS [WARMUP_SECONDS]
 *
 * Opens CONNECTIONS connections to ws://HOST:PORT/, each with a blocking
 * handshake (a fixed Sec-WebSocket-Key, no extensions offered, so no
 * compression; the answer must be 101 with the matching Sec-WebSocket-Accept).
 * Then, on one thread with epoll and non-blocking sockets, each connection
 * loops: send one masked binary frame of SIZE payload bytes, read the echoed
 * frame fully (2-, 16- or 64-bit length; control frames in between are
 * skipped), check it (binary, FIN, same length, same bytes), count one round
 * trip, send the next. WARMUP_SECONDS (default 0) run uncounted first.
 *
 * On stdout, each on its own line and flushed:
 *   "start"   when counting begins (after the handshakes and the warm-up)
 *   "stop"    when counting ends
 *   "roundtrips=R bytes=B seconds=T connections=N size=S rps=X"
 * where bytes = R * SIZE (payload echoed, counted once). Errors go to stderr
 * with exit status 1: any failure is fatal, so a run that prints its result
 * completed without one.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" /* RFC 6455, section 1.3 */

typedef struct {
    int fd;
    size_t sent;       /* bytes of the request frame written so far */
    unsigned char *in; /* receive buffer */
    size_t have;       /* bytes in `in` */
    int want_out;      /* EPOLLOUT registered */
    int draining;      /* at the end: echo still in flight */
} conn_t;

static unsigned char *frame;   /* the masked request frame, shared */
static size_t frame_len;
static unsigned char *payload; /* the unmasked payload, to compare with */
static size_t size;
static size_t in_cap;
static int epfd;

static void die(const char *what) {
    fprintf(stderr, "wsload: %s: %s\n", what, errno ? strerror(errno) : "failed");
    exit(1);
}

static void fail(const char *msg) {
    fprintf(stderr, "wsload: %s\n", msg);
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void build_frame(void) {
    static const unsigned char mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t hdr = size < 126 ? 2 : size < 65536 ? 4 : 10;
    frame_len = hdr + 4 + size;
    frame = malloc(frame_len);
    payload = malloc(size ? size : 1);
    if (!frame || !payload) die("malloc");
    frame[0] = 0x82; /* FIN, binary */
    if (size < 126) {
        frame[1] = 0x80 | (unsigned char)size;
    } else if (size < 65536) {
        frame[1] = 0x80 | 126;
        frame[2] = (unsigned char)(size >> 8);
        frame[3] = (unsigned char)size;
    } else {
        frame[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++) frame[2 + i] = (unsigned char)((uint64_t)size >> (56 - 8 * i));
    }
    memcpy(frame + hdr, mask, 4);
    for (size_t i = 0; i < size; i++) {
        payload[i] = (unsigned char)('a' + (i * 7 + i / 251) % 26);
        frame[hdr + 4 + i] = payload[i] ^ mask[i & 3];
    }
}

/* Blocking connect + handshake; leftover bytes after the 101's head stay in c->in. */
static void open_conn(conn_t *c, const struct sockaddr_in *addr, const char *host, int port) {
    int one = 1;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) die("socket");
    if (connect(c->fd, (const struct sockaddr *)addr, sizeof *addr) < 0) die("connect");
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: " KEY "\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n", host, port);
    for (int off = 0; off < n;) {
        ssize_t w = write(c->fd, req + off, n - off);
        if (w < 0) { if (errno == EINTR) continue; die("handshake write"); }
        off += (int)w;
    }
    c->in = malloc(in_cap);
    if (!c->in) die("malloc");
    c->have = 0;
    char *end = NULL;
    while (!end) {
        if (c->have + 1 >= in_cap) fail("handshake answer too long");
        ssize_t r = read(c->fd, c->in + c->have, in_cap - 1 - c->have);
        if (r < 0) { if (errno == EINTR) continue; die("handshake read"); }
        if (r == 0) fail("connection closed during the handshake");
        c->have += (size_t)r;
        c->in[c->have] = 0;
        end = strstr((char *)c->in, "\r\n\r\n");
    }
    size_t head = (size_t)(end - (char *)c->in) + 4;
    if (strncmp((char *)c->in, "HTTP/1.1 101", 12) != 0) {
        fprintf(stderr, "wsload: handshake answered: %.*s\n", (int)head, (char *)c->in);
        exit(1);
    }
    *end = 0;
    if (!strcasestr((char *)c->in, ACCEPT)) fail("handshake: wrong or missing Sec-WebSocket-Accept");
    if (strcasestr((char *)c->in, "sec-websocket-extensions")) fail("handshake: server negotiated an extension");
    memmove(c->in, c->in + head, c->have - head);
    c->have -= head;
    int fl = fcntl(c->fd, F_GETFL);
    if (fl < 0 || fcntl(c->fd, F_SETFL, fl | O_NONBLOCK) < 0) die("fcntl O_NONBLOCK");
}

/* Write as much of the request frame as the socket takes; 1 when all sent. */
static int pump_out(conn_t *c) {
    while (c->sent < frame_len) {
        ssize_t w = write(c->fd, frame + c->sent, frame_len - c->sent);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            die("write");
        }
        c->sent += (size_t)w;
    }
    int done = c->sent == frame_len;
    if (done == c->want_out) {
        /* EPOLLOUT needed iff not done: toggle it when that changes */
        struct epoll_event ev = {.events = EPOLLIN | (done ? 0 : EPOLLOUT), .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
        c->want_out = !done;
    }
    return done;
}

/* Consume complete frames in c->in. Returns how many echoes completed (0 or 1). */
static int parse_in(conn_t *c) {
    for (;;) {
        if (c->have < 2) return 0;
        unsigned char *p = c->in;
        if (p[1] & 0x80) fail("server frame is masked");
        uint64_t len = p[1] & 0x7f;
        size_t hdr = 2;
        if (len == 126) {
            if (c->have < 4) return 0;
            len = ((uint64_t)p[2] << 8) | p[3];
            hdr = 4;
        } else if (len == 127) {
            if (c->have < 10) return 0;
            len = 0;
            for (int i = 0; i < 8; i++) len = (len << 8) | p[2 + i];
            hdr = 10;
        }
        if (hdr + len > in_cap) fail("server frame longer than expected");
        if (c->have < hdr + len) return 0;
        int opcode = p[0] & 0x0f;
        if (opcode == 0x8) fail("server closed the WebSocket");
        int echoed = 0;
        if (opcode & 0x8) {
            /* ping or pong: skipped (runs are shorter than any ping timeout) */
        } else {
            if (p[0] != 0x82) fail("echo is not one binary frame with FIN");
            if (len != size) fail("echo has the wrong length");
            if (memcmp(p + hdr, payload, size) != 0) fail("echo has the wrong bytes");
            echoed = 1;
        }
        size_t used = hdr + (size_t)len;
        memmove(c->in, c->in + used, c->have - used);
        c->have -= used;
        if (echoed) {
            if (c->have) fail("data after the echo before the next request");
            return 1;
        }
    }
}

/* Read what the socket has; returns 1 when an echo completed. */
static int pump_in(conn_t *c) {
    for (;;) {
        int got = parse_in(c);
        if (got) return 1;
        if (c->have >= in_cap) fail("receive buffer full");
        ssize_t r = read(c->fd, c->in + c->have, in_cap - c->have);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            die("read");
        }
        if (r == 0) fail("server closed the connection");
        c->have += (size_t)r;
    }
}

/* After counting: let each connection finish the echo in flight (uncounted),
 * then close the WebSocket properly (a close frame, 1000, and wait for the
 * server's close frame or EOF), so that servers see an orderly close. Bounded
 * by about 2 s for the drain and 1 s per connection for the close. */
static void close_all(conn_t *conns, int nconn) {
    static const unsigned char close_frame[8] = {0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8};
    double deadline = now() + 2.0;
    int busy = nconn;
    for (int i = 0; i < nconn; i++) conns[i].draining = 1;
    while (busy && now() < deadline) {
        struct epoll_event evs[256];
        int n = epoll_wait(epfd, evs, 256, 50);
        if (n < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (!c->draining) continue;
            if (c->sent < frame_len && (evs[i].events & EPOLLOUT)) pump_out(c);
            if ((evs[i].events & EPOLLIN) && pump_in(c)) {
                c->draining = 0;
                busy--;
            }
        }
    }
    for (int i = 0; i < nconn; i++) {
        conn_t *c = &conns[i];
        if (c->draining) { close(c->fd); continue; } /* never drained: just close */
        int fl = fcntl(c->fd, F_GETFL);
        fcntl(c->fd, F_SETFL, fl & ~O_NONBLOCK);
        struct timeval tv = {1, 0};
        setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (write(c->fd, close_frame, sizeof close_frame) == (ssize_t)sizeof close_frame) {
            char buf[4096];
            ssize_t r;
            /* the server's close frame is 4 bytes; then it closes */
            while ((r = read(c->fd, buf, sizeof buf)) > 0) {
                if ((unsigned char)buf[0] == 0x88) break;
            }
        }
        close(c->fd);
    }
}

int main(int argc, char **argv) {
    if (argc < 6 || argc > 7) {
        fprintf(stderr, "usage: wsload HOST PORT CONNECTIONS SIZE SECONDS [WARMUP_SECONDS]\n");
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    int nconn = atoi(argv[3]);
    size = (size_t)strtoull(argv[4], NULL, 10);
    double seconds = atof(argv[5]);
    double warmup = argc > 6 ? atof(argv[6]) : 0.0;
    if (port <= 0 || nconn <= 0 || seconds <= 0 || warmup < 0) fail("bad arguments");
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) fail("HOST must be an IPv4 address");

    build_frame();
    in_cap = size + 14 + 4096; /* one frame, its header, and a handshake answer's worth */
    epfd = epoll_create1(0);
    if (epfd < 0) die("epoll_create1");
    conn_t *conns = calloc((size_t)nconn, sizeof *conns);
    if (!conns) die("calloc");
    for (int i = 0; i < nconn; i++) {
        conn_t *c = &conns[i];
        open_conn(c, &addr, host, port);
        if (c->have) fail("data from the server before any request");
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
    }

    double t0 = now();
    double t_start = t0 + warmup, t_end = t_start + seconds;
    int counting = warmup <= 0;
    if (counting) { puts("start"); fflush(stdout); t_start = t0; t_end = t0 + seconds; }
    unsigned long long roundtrips = 0;
    for (int i = 0; i < nconn; i++) pump_out(&conns[i]);

    struct epoll_event evs[256];
    for (;;) {
        double t = now();
        if (!counting && t >= t_start) {
            counting = 1;
            t_start = t;
            t_end = t + seconds;
            puts("start");
            fflush(stdout);
        }
        if (counting && t >= t_end) break;
        int n = epoll_wait(epfd, evs, 256, 50);
        if (n < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (evs[i].events & (EPOLLERR | EPOLLHUP) && !(evs[i].events & EPOLLIN)) fail("socket error or hang-up");
            if (c->sent < frame_len) {
                if (evs[i].events & EPOLLOUT) pump_out(c);
                /* the server may echo while we still write (large frames): read too */
            }
            if (evs[i].events & EPOLLIN) {
                if (pump_in(c)) {
                    if (c->sent < frame_len) fail("echo arrived before the whole frame was sent");
                    if (counting) roundtrips++;
                    c->sent = 0;
                    pump_out(c);
                }
            }
        }
    }
    double elapsed = now() - t_start;
    puts("stop");
    fflush(stdout);
    close_all(conns, nconn);
    printf("roundtrips=%llu bytes=%llu seconds=%.6f connections=%d size=%zu rps=%.1f\n",
           roundtrips, roundtrips * (unsigned long long)size, elapsed, nconn, size,
           roundtrips / elapsed);
    fflush(stdout);
    return 0;
}
