/* tlsload: a TLS handshake load generator for bench/tls.py.
 *
 *   cc -O2 -o build/tlsload bench/tlsload.c -lssl -lcrypto
 *   tlsload HOST PORT CONNECTIONS SECONDS WARMUP_SECONDS full|resume [EXPECT_BODY]
 *
 * Keeps CONNECTIONS slots busy on one thread (epoll, non-blocking sockets).
 * Each slot loops: open a new TCP connection, make a TLS handshake, send
 * "GET / HTTP/1.1" with "Connection: close", read the response (status 200,
 * Content-Length body, equal to EXPECT_BODY when given), send close_notify,
 * close, and count one handshake. Every connection gets a new SSL object:
 *
 *   full    no session is offered, so every handshake is a full one
 *           (certificate and CertificateVerify signature: what a new client
 *           costs the server);
 *   resume  each slot offers the session it got from its previous connection
 *           (TLS 1.3 PSK from a NewSessionTicket, or a TLS 1.2 ticket/ID);
 *           the count of handshakes the server actually resumed is printed.
 *
 * wrk cannot stand in for this: on reconnect it calls SSL_shutdown and
 * SSL_clear on the same SSL object, which keeps the session, so its
 * "Connection: close" runs resume whenever the server issues tickets.
 *
 * The certificate is not verified (a benchmark against 127.0.0.1); the
 * signature in CertificateVerify is, as OpenSSL always does. WARMUP_SECONDS
 * run uncounted first. On stdout, each on its own line and flushed:
 *   "start"   when counting begins
 *   "stop"    when counting ends
 *   "handshakes=N resumed=R errors=E seconds=T rate=X p50_us=A p99_us=B
 *    version=V cipher=C"
 * where the latency is from connect() to the end of the response body. A
 * failed connection (connect, handshake, I/O or a wrong answer) is counted in
 * errors and its slot starts over; the first error's reason goes to stderr.
 * Exit status 1 when no handshake completed in the counted seconds.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { S_CONNECT, S_HANDSHAKE, S_WRITE, S_READ };

typedef struct {
    int fd;
    int state;
    SSL *ssl;
    SSL_SESSION *session; /* resume mode: offered on the next connection */
    double t0;            /* connect() time */
    int connect_errno;    /* connect() failed at once */
    int reused;           /* the server resumed this connection's session */
    size_t sent;
    char in[4096];
    size_t have;
    long body_len; /* -1 until the head is parsed */
    size_t head_len;
} slot_t;

static SSL_CTX *ctx;
static struct sockaddr_in addr;
static int epfd;
static int resume;
static char request[256];
static size_t request_len;
static const char *expect;
static int counting;
static long handshakes, resumed, errors;
static double *lat;
static size_t lat_n, lat_cap;
static char version[32] = "?", cipher[64] = "?";

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "tlsload: %s: %s\n", what, errno ? strerror(errno) : "failed");
    exit(1);
}

static void start_conn(slot_t *s);

/* Ends the slot's connection; ok: count it. Then starts the next one. */
static void finish(slot_t *s, int ok, const char *why) {
    if (s->ssl) {
        if (ok) {
            if (resume) {
                SSL_SESSION *next = SSL_get1_session(s->ssl);
                if (s->session) SSL_SESSION_free(s->session);
                s->session = next;
            }
            SSL_shutdown(s->ssl); /* close_notify, not waiting for the peer's */
        }
        SSL_free(s->ssl);
        s->ssl = NULL;
    }
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
    if (counting) {
        if (ok) {
            handshakes++;
            resumed += s->reused;
            if (lat_n == lat_cap) {
                lat_cap = lat_cap ? 2 * lat_cap : 65536;
                lat = realloc(lat, lat_cap * sizeof *lat);
                if (!lat) die("realloc");
            }
            lat[lat_n++] = (now() - s->t0) * 1e6;
        } else {
            if (errors == 0) fprintf(stderr, "tlsload: first error: %s\n", why);
            errors++;
        }
    }
    ERR_clear_error();
    start_conn(s);
}

static void want(slot_t *s, unsigned events) {
    struct epoll_event ev = {.events = events | EPOLLONESHOT, .data.ptr = s};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, s->fd, &ev) < 0) die("epoll_ctl MOD");
}

static void start_conn(slot_t *s) {
    int one = 1;
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) die("socket");
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    s->t0 = now();
    s->have = 0;
    s->sent = 0;
    s->body_len = -1;
    s->state = S_CONNECT;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLONESHOT, .data.ptr = s};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, s->fd, &ev) < 0) die("epoll_ctl ADD");
    /* A failure now is reported on the EPOLLOUT that follows. */
    s->connect_errno = 0;
    if (connect(s->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS)
        s->connect_errno = errno;
}

/* An SSL call returned r <= 0: wait for the socket, or fail the connection. */
static int ssl_wait(slot_t *s, int r, const char *what) {
    int e = SSL_get_error(s->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        want(s, EPOLLIN);
        return 1;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        want(s, EPOLLOUT);
        return 1;
    }
    char why[300];
    unsigned long code = ERR_peek_error();
    const char *reason = code ? ERR_reason_error_string(code) : NULL;
    if (!reason) reason = e == SSL_ERROR_SYSCALL ? "connection closed or reset" : "?";
    snprintf(why, sizeof why, "%s: SSL error %d (%s)", what, e, reason);
    finish(s, 0, why);
    return 0;
}

/* Parses the response head once it is all in; 0 when it is not yet, -1 bad. */
static int parse_head(slot_t *s) {
    char *end = memmem(s->in, s->have, "\r\n\r\n", 4);
    if (!end) return s->have == sizeof s->in ? -1 : 0;
    s->head_len = (size_t)(end - s->in) + 4;
    if (s->have < 12 || memcmp(s->in, "HTTP/1.1 200", 12) != 0) return -1;
    *end = 0;
    char *cl = strcasestr(s->in, "\r\ncontent-length:");
    *end = '\r';
    if (!cl) return -1;
    s->body_len = strtol(cl + 17, NULL, 10);
    if (s->body_len < 0 || s->head_len + (size_t)s->body_len > sizeof s->in) return -1;
    return 1;
}

static void step(slot_t *s) {
    for (;;) {
        switch (s->state) {
        case S_CONNECT: {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (!err) err = s->connect_errno;
            if (err) {
                char why[128];
                snprintf(why, sizeof why, "connect: %s", strerror(err));
                finish(s, 0, why);
                return;
            }
            s->ssl = SSL_new(ctx);
            if (!s->ssl) die("SSL_new");
            SSL_set_fd(s->ssl, s->fd);
            if (resume && s->session) SSL_set_session(s->ssl, s->session);
            s->state = S_HANDSHAKE;
            break;
        }
        case S_HANDSHAKE: {
            int r = SSL_connect(s->ssl);
            if (r <= 0) {
                ssl_wait(s, r, "handshake");
                return;
            }
            s->reused = SSL_session_reused(s->ssl);
            if (version[0] == '?') {
                snprintf(version, sizeof version, "%s", SSL_get_version(s->ssl));
                snprintf(cipher, sizeof cipher, "%s", SSL_get_cipher_name(s->ssl));
            }
            s->state = S_WRITE;
            break;
        }
        case S_WRITE: {
            int r = SSL_write(s->ssl, request + s->sent, (int)(request_len - s->sent));
            if (r <= 0) {
                ssl_wait(s, r, "write");
                return;
            }
            s->sent += (size_t)r;
            if (s->sent == request_len) s->state = S_READ;
            break;
        }
        case S_READ: {
            int r = SSL_read(s->ssl, s->in + s->have, (int)(sizeof s->in - s->have));
            if (r <= 0) {
                ssl_wait(s, r, "read");
                return;
            }
            s->have += (size_t)r;
            if (s->body_len < 0) {
                int h = parse_head(s);
                if (h < 0) {
                    finish(s, 0, "not a 200 response with a Content-Length that fits 4 KiB");
                    return;
                }
                if (h == 0) break;
            }
            if (s->have < s->head_len + (size_t)s->body_len) break;
            if (s->have > s->head_len + (size_t)s->body_len) {
                finish(s, 0, "bytes after the response");
                return;
            }
            if (expect && ((size_t)s->body_len != strlen(expect) ||
                           memcmp(s->in + s->head_len, expect, strlen(expect)) != 0)) {
                finish(s, 0, "unexpected body");
                return;
            }
            finish(s, 1, NULL);
            return;
        }
        }
    }
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: tlsload HOST PORT CONNECTIONS SECONDS WARMUP full|resume "
                        "[EXPECT_BODY]\n");
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), nconn = atoi(argv[3]);
    double seconds = atof(argv[4]), warmup = atof(argv[5]);
    if (strcmp(argv[6], "resume") == 0) resume = 1;
    else if (strcmp(argv[6], "full") != 0) {
        fprintf(stderr, "tlsload: mode must be full or resume\n");
        return 2;
    }
    expect = argc > 7 ? argv[7] : NULL;
    if (nconn < 1 || seconds <= 0 || warmup < 0) {
        fprintf(stderr, "tlsload: bad CONNECTIONS, SECONDS or WARMUP\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "tlsload: HOST must be an IPv4 address\n");
        return 2;
    }
    request_len = (size_t)snprintf(request, sizeof request,
                                   "GET / HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n",
                                   host, port);

    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) die("SSL_CTX_new");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* Sessions are kept per slot by hand (resume mode), never by the context. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    /* Offer ALPN as browsers do (0 is success for this call). */
    if (SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)"\x08http/1.1", 9) != 0)
        die("SSL_CTX_set_alpn_protos");

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    slot_t *slots = calloc((size_t)nconn, sizeof *slots);
    if (!slots) die("calloc");
    for (int i = 0; i < nconn; i++) {
        slots[i].fd = -1;
        start_conn(&slots[i]);
    }

    double t_start = now() + warmup, t_stop = t_start + seconds, t_counted = 0;
    if (warmup == 0) {
        counting = 1;
        printf("start\n");
        fflush(stdout);
    }
    struct epoll_event evs[256];
    for (;;) {
        double t = now();
        if (!counting && t >= t_start && t < t_stop) {
            counting = 1;
            t_start = t;
            printf("start\n");
            fflush(stdout);
        }
        if (t >= t_stop) {
            t_counted = t - t_start;
            counting = 0;
            printf("stop\n");
            fflush(stdout);
            break;
        }
        double until = counting ? t_stop : t_start;
        int timeout = (int)((until - t) * 1000) + 1;
        int n = epoll_wait(epfd, evs, 256, timeout > 100 ? 100 : timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) step(evs[i].data.ptr);
    }

    double p50 = 0, p99 = 0;
    if (lat_n) {
        qsort(lat, lat_n, sizeof *lat, cmp);
        p50 = lat[lat_n / 2];
        p99 = lat[(size_t)(lat_n * 0.99)];
    }
    printf("handshakes=%ld resumed=%ld errors=%ld seconds=%.3f rate=%.1f p50_us=%.0f p99_us=%.0f "
           "version=%s cipher=%s\n",
           handshakes, resumed, errors, t_counted, handshakes / t_counted, p50, p99, version,
           cipher);
    fflush(stdout);
    for (int i = 0; i < nconn; i++) {
        if (slots[i].ssl) SSL_free(slots[i].ssl);
        if (slots[i].fd >= 0) close(slots[i].fd);
        if (slots[i].session) SSL_SESSION_free(slots[i].session);
    }
    SSL_CTX_free(ctx);
    return handshakes ? 0 : 1;
}
