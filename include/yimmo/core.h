/*
 * yimmo/core.h: the engine. One libev loop per server, listeners,
 * connections with an input buffer and an output queue of buckets, and the
 * two vtables every connection carries: a transport (a plain socket or TLS)
 * and a protocol (HTTP; WebSocket and MQTT swap in on upgrade).
 */
#ifndef YIMMO_CORE_H
#define YIMMO_CORE_H

#include <pthread.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <ev.h>

#include "yimmo/http.h"

typedef struct ymo_server_s ymo_server_t;
typedef struct ymo_conn_s ymo_conn_t;
struct ymo_tls_s;

/* --- Output queue ------------------------------------------------------ */

/* A run of bytes waiting to be written: inside the queue's own storage
 * (ref == NULL, base is an offset), owned elsewhere and held through ref
 * until written, or a range of an open file (fd >= 0, base is the file
 * offset) sent with sendfile(). */
typedef struct {
    uintptr_t base;
    size_t len;
    void *ref;
    int fd;
} ymo_bucket_t;

typedef struct {
    char *data;             /* storage for copied bytes */
    size_t len, cap;
    ymo_bucket_t *b;        /* buckets [head, count) are pending */
    uint32_t head, count, cap_b;
    size_t bytes;           /* bytes pending in all buckets */
} ymo_outq_t;

/* A queue is a connection's output (its `out`): appending to it puts the
 * connection on the server's flush list, written before the loop polls
 * again. */

/* Append a copy of data. */
int ymo_outq_copy(ymo_outq_t *q, const void *data, size_t len);
/* Append data owned by ref; the server's release hook gets ref once sent. */
int ymo_outq_ref(ymo_outq_t *q, const void *data, size_t len, void *ref);
/* Append len bytes of the file fd from offset; the queue owns fd and closes
 * it once sent. */
int ymo_outq_file(ymo_outq_t *q, int fd, uint64_t offset, size_t len);
/* Reserve len bytes of copied storage at the end; returns NULL on ENOMEM. */
char *ymo_outq_reserve(ymo_outq_t *q, size_t len);

/* A point in the queue to roll back to (a response head that failed
 * validation half way). */
typedef struct {
    uint32_t count;
    size_t len, bytes, last_len;
} ymo_outq_mark_t;

void ymo_outq_mark(const ymo_outq_t *q, ymo_outq_mark_t *m);
/* Drop everything queued since m; no referenced bucket may have been added. */
void ymo_outq_rollback(ymo_outq_t *q, const ymo_outq_mark_t *m);

/* --- Vtables ------------------------------------------------------------ */

typedef struct {
    /* > 0 bytes read, 0 at EOF, -errno (-EAGAIN when nothing to read) or a
     * YMO_E* code. -EAGAIN with YMO_CONN_READ_WANTS_WRITE set: try again
     * once the socket is writable. */
    ssize_t (*read)(ymo_conn_t *c, char *buf, size_t len);
    /* Bytes written or -errno; -EAGAIN with YMO_CONN_WRITE_WANTS_READ set:
     * try again once the socket is readable. */
    ssize_t (*writev)(ymo_conn_t *c, const struct iovec *iov, int iovcnt);
    /* Stop sending (half close). */
    void (*shutdown)(ymo_conn_t *c);
    /* Send len bytes of file fd from off; bytes sent or -errno. NULL when
     * the transport cannot (TLS): the file is read and written instead. */
    ssize_t (*sendfile)(ymo_conn_t *c, int fd, uint64_t off, size_t len);
    /* Optional: nonzero when input already taken from the socket waits
     * inside the transport (TLS records read ahead), which no readiness
     * event will announce. It may be an incomplete record: a read that
     * then returns -EAGAIN needs the socket again. */
    size_t (*pending)(ymo_conn_t *c);
    /* Optional: release the transport's state (the socket is still open). */
    void (*free)(ymo_conn_t *c);
} ymo_transport_t;

typedef struct {
    /* New bytes arrived in c->in; consume what can be consumed. */
    void (*on_data)(ymo_conn_t *c);
    /* The output queue drained. */
    void (*on_drained)(ymo_conn_t *c);
    /* The connection's timer fired. */
    void (*on_timeout)(ymo_conn_t *c);
    /* The peer closed its side (EOF) or the connection failed. */
    void (*on_eof)(ymo_conn_t *c, int err);
    /* The connection is about to be freed: release protocol state. */
    void (*on_free)(ymo_conn_t *c);
    /* The connection was just closed (its memory stays until reaped). */
    void (*on_close)(ymo_conn_t *c);
    /* Non-zero while the embedder still holds the connection (a suspended
     * exchange): reaping waits. */
    int (*busy)(ymo_conn_t *c);
    /* The connection is on the ready list: run what waits for the
     * embedder (called from ymo_server_run_ready, the embedder's lock held). */
    void (*on_ready)(ymo_conn_t *c);
    /* The server stops: end the connection gracefully (close it now when
     * nothing is in progress). */
    void (*on_stop)(ymo_conn_t *c);
} ymo_proto_t;

/* --- Connection ---------------------------------------------------------- */

enum ymo_conn_flags {
    YMO_CONN_CLOSED = 1u << 0,          /* closed, waiting to be freed */
    YMO_CONN_READING = 1u << 1,         /* read watcher started */
    YMO_CONN_WRITING = 1u << 2,         /* write watcher started */
    YMO_CONN_CLOSE_AFTER_FLUSH = 1u << 3,
    YMO_CONN_LINGERING = 1u << 4,       /* half closed, discarding input */
    YMO_CONN_READY = 1u << 5,           /* on the server's ready list */
    YMO_CONN_EOF = 1u << 6,             /* the peer sent FIN */
    YMO_CONN_DRAINING = 1u << 7,        /* the server stops: close when idle */
    YMO_CONN_CHECKED_OUT = 1u << 8,     /* a worker thread owns it for one exchange */
    YMO_CONN_CLOSE_PENDING = 1u << 9,   /* closed while checked out: close at check-in */
    YMO_CONN_WAIT_DRAIN = 1u << 10,     /* a request waits for earlier output to drain */
    YMO_CONN_READ_WANTS_WRITE = 1u << 11,   /* the transport's read waits for POLLOUT */
    YMO_CONN_WRITE_WANTS_READ = 1u << 12,   /* the transport's write waits for POLLIN */
    YMO_CONN_DIRTY = 1u << 13,          /* output queued: on the server's flush list */
    YMO_CONN_STOP_WAKES = 1u << 14,     /* a blocking read returns 1 once the server stops */
    YMO_CONN_SEND_TIMER = 1u << 15,     /* the timer is the send timeout a blocked write set */
    YMO_CONN_EOF_SEEN = 1u << 16        /* a read found EOF behind data: on_eof in the next pass */
};

typedef struct {
    char *data;
    size_t len, cap;
} ymo_buf_t;

struct ymo_conn_s {
    ymo_server_t *server;
    int fd;
    uint32_t flags;
    ev_io rio, wio;
    ev_timer timer;
    const ymo_transport_t *transport;
    void *transport_data;
    const ymo_proto_t *proto;
    void *proto_data;
    ymo_buf_t in;
    uint32_t read_hint;             /* bytes the last wakeup brought, when more than read_size */
    ymo_outq_t out;
    ymo_conn_t *next, *prev;        /* the server's list of live connections */
    ymo_conn_t *next_ready;         /* the server's ready list */
    ymo_conn_t *next_closing;       /* the server's list of closed connections */
    ymo_conn_t *next_dirty;         /* the server's flush list */
    struct sockaddr_storage peer;
    socklen_t peer_len;
    const struct sockaddr_storage *local;   /* the listener's address */
    char peer_host[46];             /* the peer's address as text, once asked */
    uint8_t peer_host_len;
    uint64_t id;
};

/* The host part of an IPv4/IPv6 address as text ("" for other families)
 * and its port; returns the text's length. host holds 46 bytes. */
size_t ymo_sockaddr_host(const struct sockaddr_storage *ss, char *host, int *port);

/* The peer's address as text, formatted once per connection. */
const char *ymo_conn_peer_host(ymo_conn_t *c, size_t *len, int *port);

/* Start or stop watching for input. */
void ymo_conn_read_start(ymo_conn_t *c);
void ymo_conn_read_stop(ymo_conn_t *c);
/* Hand the connection to a worker thread for one exchange (the loop's
 * watchers leave it alone until it is checked back in). */
void ymo_conn_check_out(ymo_conn_t *c);
/* (Re)arm the connection's one timer; seconds <= 0 stops it. */
void ymo_conn_timer(ymo_conn_t *c, double seconds);
/* Write what is queued now; the rest goes when the socket is writable.
 * Returns 0 or -errno (the connection is then closed). */
int ymo_conn_flush(ymo_conn_t *c);
/* Close once the output queue is flushed, lingering to drain input so the
 * peer reads the last response rather than a reset. */
void ymo_conn_close_after_flush(ymo_conn_t *c);
/* Close now; the memory is freed later, outside the connection's callbacks. */
void ymo_conn_close(ymo_conn_t *c);
/* Put the connection on the server's ready list (dispatched once per loop
 * iteration). */
void ymo_conn_make_ready(ymo_conn_t *c);
/* Make room for at least n more bytes in c->in; 0 or YMO_E_NOMEM. */
int ymo_conn_reserve(ymo_conn_t *c, size_t n);
/* Release c->in's storage if it is empty. */
void ymo_conn_release_input(ymo_conn_t *c);

/* Write what can be written now without waiting and without touching the
 * loop (safe on a checked-out connection). 0, or -errno on a failed write. */
int ymo_conn_write_now(ymo_conn_t *c);

/* Blocking helpers for code that must wait on one connection (the
 * application asked for a body that is still arriving). They poll the
 * socket with a deadline; the caller releases its locks around them.
 * Return 0, YMO_E_TIMEOUT, YMO_E_CLOSED or -errno. */
int ymo_conn_flush_sync(ymo_conn_t *c, double timeout);
/* Reads more bytes into c->in (at least one) without running on_data; on
 * a YMO_CONN_STOP_WAKES connection, returns 1 once the server stops. */
int ymo_conn_read_sync(ymo_conn_t *c, double timeout);

/* --- Server ------------------------------------------------------------ */

typedef struct {
    /* Called once per loop iteration while connections are ready: take the
     * embedder's lock and call ymo_server_run_ready(). */
    void (*dispatch)(ymo_server_t *s);
    /* A request on c is ready (head, and body unless it waits for
     * 100-continue). The embedder answers through ymo_http_* before it
     * returns. */
    void (*on_request)(ymo_server_t *s, ymo_conn_t *c);
    /* An output bucket's owner, once its bytes are written. No lock held. */
    void (*release)(ymo_server_t *s, void *ref);
    /* A log line (level as in Python logging). No lock held. */
    void (*log)(ymo_server_t *s, int level, const char *msg);
    /* Optional: hand the ready request on c to a worker thread instead of
     * calling on_request on the loop. The worker owns c (the loop leaves
     * it alone) until it calls ymo_server_checkin(). */
    void (*submit)(ymo_server_t *s, ymo_conn_t *c);
    /* A suspended exchange can go on: its output drained, or its
     * connection closed (then only clean up). Called like on_request. */
    void (*resume)(ymo_server_t *s, ymo_conn_t *c);
    /* WebSocket: the connection now speaks it (once, before any message
     * and before ws_close), a whole message arrived (data is
     * malloc'd; the hook owns it), or the connection closed with code and
     * reason (exactly once). */
    void (*ws_open)(ymo_server_t *s, ymo_conn_t *c);
    void (*ws_message)(ymo_server_t *s, ymo_conn_t *c, int opcode, uint8_t *data, size_t len);
    void (*ws_close)(ymo_server_t *s, ymo_conn_t *c, int code, const char *reason, size_t len);
    /* Optional: the loop is about to sleep (nothing ready, nothing left to
     * write). The embedder may tidy up, e.g. let go of the owners release
     * handed it without its lock; work it makes is done before the sleep. */
    void (*idle)(ymo_server_t *s);
} ymo_server_hooks_t;

typedef struct {
    ymo_http_limits_t http;
    double keepalive_timeout;   /* idle between requests; 0: no keep-alive */
    double header_timeout;      /* from the first byte until the head is complete */
    double body_timeout;        /* between reads of a body */
    double send_timeout;        /* between writes that make progress */
    double linger_timeout;      /* discarding input after the last response */
    size_t read_size;           /* bytes per read() */
    uint64_t body_buffer_max;   /* bodies up to this are read before the
                                   handler runs; larger and chunked ones are
                                   streamed to it on a worker thread, and
                                   spooled to a file first for handlers on
                                   the loop */
    size_t output_high_water;   /* stop reading while more is queued */
    int backlog;
    int max_accept;             /* accepts per wakeup */
    int max_dispatch;           /* requests per connection per wakeup */
    uint32_t max_connections;   /* 0: no limit; beyond it new connections
                                   wait in the listen backlog */
    double busy_poll;           /* seconds the loop keeps polling without
                                   sleeping after input arrived; 0: off */
} ymo_server_config_t;

void ymo_server_config_default(ymo_server_config_t *cfg);

enum {
    YMO_LOG_DEBUG = 10,
    YMO_LOG_INFO = 20,
    YMO_LOG_WARNING = 30,
    YMO_LOG_ERROR = 40
};

typedef struct ymo_listener_s ymo_listener_t;

struct ymo_server_s {
    struct ev_loop *loop;
    ymo_server_config_t cfg;
    ymo_server_hooks_t hooks;
    void *data;                     /* the embedder's */

    ymo_listener_t *listeners;
    ev_prepare prepare;
    ev_idle idle;
    ev_tstamp last_input;           /* loop time input last arrived (busy_poll) */
    ev_async wakeup;
    ev_timer stop_timer;

    ymo_conn_t *conns;              /* live connections */
    ymo_conn_t *ready, **ready_tail;
    ymo_conn_t *dirty;              /* connections with output queued since the last flush */
    ymo_conn_t *closing;            /* closed, to be freed */
    ymo_conn_t *free_conns;         /* freelist */
    uint32_t nconns, nfree;
    uint64_t next_id;

    int dispatch_wanted;            /* call the dispatch hook even with nothing ready */
    volatile sig_atomic_t stop_requested;
    double stop_timeout;            /* < 0: wait for in-flight work forever */
    int stopping;
    int accept_paused;              /* at max_connections */
    int stop_forced;                /* the graceful stop timed out */
    int freeing;                    /* ymo_server_free: nothing waits any more */

    ymo_http_header_t *free_headers;/* freelist of header arrays */
    uint32_t nfree_headers;         /* ... this many, at most 256 */
    ymo_buf_t spare_bufs[16];       /* input buffers of idle connections */
    uint32_t nspare_bufs;
    ymo_outq_t spare_outqs[16];     /* output queue storage of idle connections */
    uint32_t nspare_outqs;

    /* Configuration of the TLS listeners' connections (tls.h). */
    struct ymo_tls_s *tls;
    pthread_mutex_t tls_lock;

    /* Connections coming back from worker threads. */
    ev_async checkin_async;
    pthread_mutex_t checkin_lock;
    ymo_conn_t *checkin_list;
    uint32_t nchecked_out;
};

/* Create the loop. 0 or -errno / YMO_E_NOMEM. */
int ymo_server_init(ymo_server_t *s, const ymo_server_config_t *cfg,
                    const ymo_server_hooks_t *hooks, void *data);
/* Close every connection and listener, free the loop. */
void ymo_server_free(ymo_server_t *s);

enum ymo_listen_flags {
    YMO_LISTEN_REUSEPORT = 1u << 0,     /* SO_REUSEPORT */
    YMO_LISTEN_TLS = 1u << 1            /* connections speak TLS (ymo_server_set_tls) */
};

/* Bind and listen on host:port (IPv4 or IPv6 literal or name). */
int ymo_server_listen(ymo_server_t *s, const char *host, int port, unsigned flags);
/* Serve on an already-bound socket (listen() is called if needed). The
 * server owns fd from now on. */
int ymo_server_listen_fd(ymo_server_t *s, int fd, unsigned flags);
/* The first listener's bound address. */
int ymo_server_address(ymo_server_t *s, struct sockaddr_storage *ss, socklen_t *len);

/* Run until stopped. */
int ymo_server_run(ymo_server_t *s);
/* Ask the server to stop: async-signal-safe and callable from any thread.
 * Stops accepting, lets in-flight exchanges finish (at most timeout
 * seconds when timeout >= 0), then ymo_server_run() returns. */
void ymo_server_stop(ymo_server_t *s, double timeout);
/* Close the listening sockets now (a stop does it too); on the loop's
 * thread only, from a callback or with the loop not running. */
void ymo_server_close_listeners(ymo_server_t *s);
/* Whether a graceful stop ran out of time (callable from any thread): work
 * still queued for worker threads is then closed, not started. */
int ymo_server_stop_forced(ymo_server_t *s);
/* Called from the dispatch hook: run the ready connections. */
void ymo_server_run_ready(ymo_server_t *s);
/* After ymo_server_run() returned, with the embedder's lock: deliver what
 * is still due (close notifications) and free the closed connections. */
void ymo_server_settle(ymo_server_t *s);

/* The cached "Date: ...\r\n" line, refreshed once a second (per thread). */
const char *ymo_server_date(ymo_server_t *s, size_t *len);

/* A worker thread is done with c: give it back to the loop. Thread-safe. */
void ymo_server_checkin(ymo_server_t *s, ymo_conn_t *c);

/* Header arrays for parsers, from a freelist (limits.max_headers long). */
ymo_http_header_t *ymo__server_headers_get(ymo_server_t *s);
void ymo__server_headers_put(ymo_server_t *s, ymo_http_header_t *h);

#endif /* YIMMO_CORE_H */
