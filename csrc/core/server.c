/*
 * The server: one libev loop, its listeners, the accept path, the ready list
 * dispatched once per loop iteration, and graceful stop.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/core_internal.h"
#include "yimmo/tls.h"

struct ymo_listener_s {
    ev_io io;
    ev_timer retry;             /* accept paused after EMFILE */
    int starved;                /* EMFILE logged; quiet until an accept works */
    int fd;
    struct sockaddr_storage addr;   /* what getsockname() said */
    unsigned flags;                 /* enum ymo_listen_flags */
    ymo_server_t *server;
    ymo_listener_t *next;
};

void ymo_server_config_default(ymo_server_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    ymo_http_limits_default(&cfg->http);
    cfg->keepalive_timeout = 5.0;
    cfg->header_timeout = 10.0;
    cfg->body_timeout = 30.0;
    cfg->send_timeout = 30.0;
    cfg->linger_timeout = 2.0;
    cfg->read_size = 16384;
    cfg->body_buffer_max = YMO_HTTP_DEFAULT_MAX_BODY;
    cfg->output_high_water = 1u << 20;
    cfg->backlog = 1024;
    cfg->max_accept = 64;
    cfg->max_dispatch = 64;
}

void ymo__log(ymo_server_t *s, int level, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (s->hooks.log != NULL)
        s->hooks.log(s, level, msg);
}

/* libev reports failures it cannot return (e.g. a failing epoll_wait) here
 * instead of aborting the process. */
static void on_syserr(const char *msg)
{
    fprintf(stderr, "yimmo: libev: %s: %s\n", msg, strerror(errno));
}

/* --- Date cache ---------------------------------------------------------- */

static const char *const wdays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

const char *ymo_server_date(ymo_server_t *s, size_t *len)
{
    /* Per thread: worker threads write responses too. */
    static _Thread_local time_t at;
    static _Thread_local char line[40];
    static _Thread_local size_t line_len;
    time_t t = time(NULL);
    if (t != at || line_len == 0) {
        struct tm tm;
        gmtime_r(&t, &tm);
        /* RFC 9110 5.6.7: IMF-fixdate. */
        int n = snprintf(line, sizeof(line), "Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n",
                         wdays[tm.tm_wday], tm.tm_mday, months[tm.tm_mon],
                         tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
        line_len = n > 0 && (size_t)n < sizeof(line) ? (size_t)n : 0;
        at = t;
    }
    *len = line_len;
    return line;
}

/* --- Header arrays ------------------------------------------------------- */

ymo_http_header_t *ymo__server_headers_get(ymo_server_t *s)
{
    ymo_http_header_t *h = s->free_headers;
    if (h != NULL) {
        s->free_headers = *(ymo_http_header_t **)h;
        s->nfree_headers--;
        return h;
    }
    size_t n = s->cfg.http.max_headers ? s->cfg.http.max_headers : 1;
    size_t size = n * sizeof(*h);
    if (size < sizeof(void *))
        size = sizeof(void *);
    return malloc(size);
}

void ymo__server_headers_put(ymo_server_t *s, ymo_http_header_t *h)
{
    if (h == NULL)
        return;
#ifndef YMO_DEBUG
    /* As many as connections are kept (256): a burst of requests does not
     * leave its peak's arrays behind for good. */
    if (s->nfree_headers < 256) {
        *(ymo_http_header_t **)h = s->free_headers;
        s->free_headers = h;
        s->nfree_headers++;
        return;
    }
#endif
    free(h);
}

/* --- Ready list ---------------------------------------------------------- */

void ymo_conn_make_ready(ymo_conn_t *c)
{
    ymo_server_t *s = c->server;
    /* A worker thread that owns the connection polls its own flags. */
    if (c->flags & (YMO_CONN_READY | YMO_CONN_CHECKED_OUT))
        return;
    c->flags |= YMO_CONN_READY;
    c->next_ready = NULL;
    *s->ready_tail = c;
    s->ready_tail = &c->next_ready;
    ymo__server_keep_polling(s);
}

/* Work is queued for the next prepare phase: the idle watcher keeps the
 * poll from blocking, and keeps ev_run from returning before then. A
 * connection waiting on the ready list reads nothing (its watchers are
 * stopped); with the listeners paused (max_connections) or closed (a
 * graceful stop), it would otherwise leave the loop with nothing active. */
void ymo__server_keep_polling(ymo_server_t *s)
{
    if (!ev_is_active(&s->idle))
        ev_idle_start(s->loop, &s->idle);
}

void ymo_server_run_ready(ymo_server_t *s)
{
    ymo_conn_t *list = s->ready;
    s->ready = NULL;
    s->ready_tail = &s->ready;
    while (list != NULL) {
        ymo_conn_t *c = list;
        list = c->next_ready;
        c->next_ready = NULL;
        c->flags &= ~YMO_CONN_READY;
        if (s->freeing)
            continue;
        c->proto->on_ready(c);
    }
}

void ymo_server_settle(ymo_server_t *s)
{
    for (int i = 0; i < 4 && s->ready != NULL; i++)
        ymo_server_run_ready(s);
    ymo__conn_reap(s);
}

static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    ymo_server_t *s = ymo_container_of(w, ymo_server_t, prepare);
    if (s->ready != NULL || s->dispatch_wanted)
        s->hooks.dispatch(s);
    /* Write everything the handlers produced: one writev per connection,
     * for the connections that queued output (not a walk over all). */
    for (int pass = 0; pass < 4 && s->dirty != NULL; pass++) {
        ymo_conn_t *list = s->dirty;
        s->dirty = NULL;
        while (list != NULL) {
            ymo_conn_t *c = list;
            list = c->next_dirty;
            c->next_dirty = NULL;
            c->flags &= ~YMO_CONN_DIRTY;
            if (c->out.bytes > 0 && !(c->flags & (YMO_CONN_WRITING | YMO_CONN_CLOSED)))
                ymo_conn_flush(c);
        }
    }
    ymo__conn_reap(s);
    /* More ready work (the per-iteration bound was hit), output queued
     * while flushing, or busy polling after recent input: poll without
     * blocking. */
    int busy = s->ready != NULL || s->dirty != NULL
               || (s->cfg.busy_poll > 0 && ev_now(loop) - s->last_input < s->cfg.busy_poll);
    if (!busy && s->hooks.idle != NULL) {
        s->hooks.idle(s);
        busy = s->ready != NULL || s->dirty != NULL;
    }
    if (busy) {
        if (!ev_is_active(&s->idle))
            ev_idle_start(loop, &s->idle);
    } else if (ev_is_active(&s->idle)) {
        ev_idle_stop(loop, &s->idle);
    }
}

static void on_idle(struct ev_loop *loop, ev_idle *w, int revents)
{
    /* Nothing: its only job is to keep the poll from blocking. */
}

/* --- Accept -------------------------------------------------------------- */

static void pause_accepting(ymo_server_t *s)
{
    s->accept_paused = 1;
    for (ymo_listener_t *l = s->listeners; l != NULL; l = l->next)
        ev_io_stop(s->loop, &l->io);
}

void ymo__server_conn_closed(ymo_server_t *s)
{
    if (s->accept_paused && !s->stopping && s->nconns < s->cfg.max_connections) {
        s->accept_paused = 0;
        for (ymo_listener_t *l = s->listeners; l != NULL; l = l->next)
            if (!ev_is_active(&l->retry) && l->fd >= 0)
                ev_io_start(s->loop, &l->io);
    }
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    ymo_listener_t *l = ymo_container_of(w, ymo_listener_t, io);
    ymo_server_t *s = l->server;

    for (int i = 0; i < s->cfg.max_accept; i++) {
        /* A log call runs Python, and with it signal handlers: a stop may
         * have closed this listener since (its struct stays until the
         * server is freed). */
        if (l->fd < 0)
            return;
        if (s->cfg.max_connections && s->nconns >= s->cfg.max_connections) {
            /* Full: the kernel's backlog holds the rest until a
             * connection closes. */
            pause_accepting(s);
            return;
        }
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            if (e == EAGAIN || e == EWOULDBLOCK)
                return;
            if (e == EINTR || e == ECONNABORTED || e == EPROTO)
                continue;
            if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
                /* Out of descriptors: leave new connections in the backlog
                 * for a moment instead of spinning on the listener. Said
                 * once per shortage, not ten times a second. */
                ymo__log(s, l->starved ? YMO_LOG_DEBUG : YMO_LOG_ERROR,
                         "accept: %s; retrying every 100 ms",
                         strerror(e));
                if (l->fd < 0)
                    return;     /* closed by a stop the log call ran */
                l->starved = 1;
                ev_io_stop(loop, &l->io);
                ev_timer_set(&l->retry, 0.1, 0.);
                ev_timer_start(loop, &l->retry);
                return;
            }
            ymo__log(s, YMO_LOG_ERROR, "accept: %s", strerror(e));
            return;
        }
        if (l->starved) {
            l->starved = 0;
            ymo__log(s, YMO_LOG_INFO, "accept: descriptors available again");
        }
        if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        ymo_conn_t *c = ymo__conn_new(s, fd, (struct sockaddr *)&ss, len);
        if (c == NULL) {
            ymo__log(s, YMO_LOG_ERROR, "out of memory accepting a connection");
            continue;
        }
        c->local = &l->addr;
        if (l->flags & YMO_LISTEN_TLS) {
            pthread_mutex_lock(&s->tls_lock);
            int r = s->tls != NULL ? ymo_tls_attach(c, s->tls) : YMO_E_STATE;
            pthread_mutex_unlock(&s->tls_lock);
            if (r < 0) {
                ymo__log(s, YMO_LOG_ERROR, "TLS for a new connection: %s", ymo_strerror(r));
                ymo_conn_close(c);
            }
        }
    }
}

static void on_accept_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    ymo_listener_t *l = ymo_container_of(w, ymo_listener_t, retry);
    if (!l->server->stopping && !l->server->accept_paused && l->fd >= 0)
        ev_io_start(loop, &l->io);
}

static int add_listener(ymo_server_t *s, int fd, unsigned flags)
{
    ymo_listener_t *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return YMO_E_NOMEM;
    l->fd = fd;
    l->flags = flags;
    l->server = s;
    socklen_t alen = sizeof(l->addr);
    if (getsockname(fd, (struct sockaddr *)&l->addr, &alen) < 0)
        l->addr.ss_family = AF_UNSPEC;
    ev_io_init(&l->io, on_accept, fd, EV_READ);
    ev_init(&l->retry, on_accept_retry);
    /* Keep the order of creation: address() reports the first. */
    ymo_listener_t **tail = &s->listeners;
    while (*tail != NULL)
        tail = &(*tail)->next;
    *tail = l;
    return 0;
}

int ymo_server_listen(ymo_server_t *s, const char *host, int port, unsigned flags)
{
    struct addrinfo hints = {0}, *res = NULL;
    char portstr[16];
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(portstr, sizeof(portstr), "%d", port);
    int rc = getaddrinfo(host && *host ? host : NULL, portstr, &hints, &res);
    if (rc != 0)
        return rc == EAI_SYSTEM ? -errno : -EADDRNOTAVAIL;

    int err = -EADDRNOTAVAIL;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                        ai->ai_protocol);
        if (fd < 0) {
            err = -errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (flags & YMO_LISTEN_REUSEPORT)
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
        if (ai->ai_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, s->cfg.backlog) < 0) {
            err = -errno;
            close(fd);
            continue;
        }
        err = add_listener(s, fd, flags);
        if (err < 0)
            close(fd);
        break;
    }
    freeaddrinfo(res);
    return err;
}

int ymo_server_listen_fd(ymo_server_t *s, int fd, unsigned flags)
{
    int type = 0;
    socklen_t tl = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0)
        return -errno;
    if (type != SOCK_STREAM)
        return -ENOTSOCK;
    int acc = 0;
    socklen_t al = sizeof(acc);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &al) == 0 && !acc) {
        /* listen() on an unbound socket binds it to a random port on
         * every interface: never what was meant. */
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
            return -errno;
        if ((ss.ss_family == AF_INET && ((struct sockaddr_in *)&ss)->sin_port == 0)
            || (ss.ss_family == AF_INET6 && ((struct sockaddr_in6 *)&ss)->sin6_port == 0)
            || (ss.ss_family == AF_UNIX && sl <= offsetof(struct sockaddr_un, sun_path)))
            return -EDESTADDRREQ;
        if (listen(fd, s->cfg.backlog) < 0)
            return -errno;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    return add_listener(s, fd, flags);
}

int ymo_server_address(ymo_server_t *s, struct sockaddr_storage *ss, socklen_t *len)
{
    /* The first listener's address, saved when it was added: its socket
     * may be closing on the loop thread (a stop) while another asks. */
    if (s->listeners == NULL || s->listeners->addr.ss_family == AF_UNSPEC)
        return -ENOTCONN;
    *ss = s->listeners->addr;
    *len = sizeof(*ss);
    return 0;
}

/* --- Stop -------------------------------------------------------------- */

/* The sockets close at a stop; the structs stay until the server is freed:
 * connections point at their addresses (c->local), and on_accept may be
 * returning from a log call that ran the stop. */
void ymo_server_close_listeners(ymo_server_t *s)
{
    for (ymo_listener_t *l = s->listeners; l != NULL; l = l->next) {
        if (s->loop != NULL) {
            ev_io_stop(s->loop, &l->io);
            ev_timer_stop(s->loop, &l->retry);
        }
        if (l->fd >= 0)
            close(l->fd);
        l->fd = -1;
    }
}

static void free_listeners(ymo_server_t *s)
{
    ymo_server_close_listeners(s);
    while (s->listeners != NULL) {
        ymo_listener_t *l = s->listeners;
        s->listeners = l->next;
        free(l);
    }
}

/* Close every connection; those a worker thread owns close when it gives
 * them back. */
static void close_all(ymo_server_t *s)
{
    ymo_conn_t *next;
    __atomic_store_n(&s->stop_forced, 1, __ATOMIC_RELAXED);     /* workers read it */
    for (ymo_conn_t *c = s->conns; c != NULL; c = next) {
        next = c->next;
        if (!(c->flags & YMO_CONN_CHECKED_OUT))
            ymo_conn_close(c);
    }
}

static void on_stop_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    ymo_server_t *s = ymo_container_of(w, ymo_server_t, stop_timer);
    ymo__log(s, YMO_LOG_WARNING, "graceful stop timed out; closing %u connections",
             (unsigned)s->nconns);
    close_all(s);
    if (s->nconns == 0)
        ev_break(loop, EVBREAK_ONE);
}

int ymo_server_stop_forced(ymo_server_t *s)
{
    return __atomic_load_n(&s->stop_forced, __ATOMIC_RELAXED);
}

void ymo_server_checkin(ymo_server_t *s, ymo_conn_t *c)
{
    pthread_mutex_lock(&s->checkin_lock);
    c->next_ready = s->checkin_list;
    s->checkin_list = c;
    pthread_mutex_unlock(&s->checkin_lock);
    ev_async_send(s->loop, &s->checkin_async);
}

static void on_checkin(struct ev_loop *loop, ev_async *w, int revents)
{
    ymo_server_t *s = ymo_container_of(w, ymo_server_t, checkin_async);
    pthread_mutex_lock(&s->checkin_lock);
    ymo_conn_t *list = s->checkin_list;
    s->checkin_list = NULL;
    pthread_mutex_unlock(&s->checkin_lock);
    while (list != NULL) {
        ymo_conn_t *c = list;
        list = c->next_ready;
        c->next_ready = NULL;
        s->nchecked_out--;
        ev_unref(loop);     /* taken at submit: the loop waits for workers */
        c->flags &= ~YMO_CONN_CHECKED_OUT;
        if (s->stopping)
            c->flags |= YMO_CONN_DRAINING;
        if (s->stop_forced)
            c->flags |= YMO_CONN_CLOSED | YMO_CONN_CLOSE_PENDING;
        if (c->flags & YMO_CONN_CLOSE_PENDING) {
            c->flags &= ~(YMO_CONN_CLOSED | YMO_CONN_CLOSE_PENDING);
            ymo_conn_close(c);
            continue;
        }
        /* What the worker queued: flushed with the rest. */
        if (c->out.bytes > 0 && !(c->flags & (YMO_CONN_DIRTY | YMO_CONN_CLOSED)))
            ymo__conn_dirty(c);
        /* An input buffer the worker emptied joins the loop's spares. */
        ymo_conn_release_input(c);
        ymo__http_checkin(c);
    }
}

void ymo__server_conn_idle(ymo_server_t *s, ymo_conn_t *c)
{
    if (s->stopping)
        ymo_conn_close(c);
}

static void begin_stop(ymo_server_t *s)
{
    if (s->stopping)
        return;
    s->stopping = 1;
    /* New connections are refused from now on (once no other process
     * holds the socket), not left in the backlog until the drain ends. */
    ymo_server_close_listeners(s);
    /* Idle connections go now; busy ones after their current exchange. */
    ymo_conn_t *next;
    for (ymo_conn_t *c = s->conns; c != NULL; c = next) {
        next = c->next;
        if (c->flags & YMO_CONN_CHECKED_OUT)
            continue;   /* a worker owns it; check-in applies the stop */
        c->flags |= YMO_CONN_DRAINING;
        if (c->proto->on_stop != NULL)
            c->proto->on_stop(c);
    }
    if (s->nconns == 0) {
        ev_break(s->loop, EVBREAK_ONE);
        return;
    }
    if (s->stop_timeout >= 0) {
        ev_timer_set(&s->stop_timer, s->stop_timeout, 0.);
        ev_timer_start(s->loop, &s->stop_timer);
    }
}

static void on_wakeup(struct ev_loop *loop, ev_async *w, int revents)
{
    ymo_server_t *s = ymo_container_of(w, ymo_server_t, wakeup);
    if (s->stop_requested)
        begin_stop(s);
}

void ymo_server_stop(ymo_server_t *s, double timeout)
{
    s->stop_timeout = timeout;
    s->stop_requested = 1;
    if (s->loop != NULL)
        ev_async_send(s->loop, &s->wakeup);
}

/* --- Life cycle -------------------------------------------------------- */

int ymo_server_init(ymo_server_t *s, const ymo_server_config_t *cfg,
                    const ymo_server_hooks_t *hooks, void *data)
{
    memset(s, 0, sizeof(*s));
    s->cfg = *cfg;
    s->hooks = *hooks;
    s->data = data;
    s->ready_tail = &s->ready;
    s->stop_timeout = -1;
    ev_set_syserr_cb(on_syserr);
    s->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
    if (s->loop == NULL)
        return YMO_E_NOMEM;
    ev_prepare_init(&s->prepare, on_prepare);
    ev_prepare_start(s->loop, &s->prepare);
    ev_unref(s->loop);
    ev_idle_init(&s->idle, on_idle);
    ev_async_init(&s->wakeup, on_wakeup);
    ev_async_start(s->loop, &s->wakeup);
    ev_unref(s->loop);
    ev_init(&s->stop_timer, on_stop_timeout);
    pthread_mutex_init(&s->checkin_lock, NULL);
    pthread_mutex_init(&s->tls_lock, NULL);
    ev_async_init(&s->checkin_async, on_checkin);
    ev_async_start(s->loop, &s->checkin_async);
    ev_unref(s->loop);
    return 0;
}

int ymo_server_run(ymo_server_t *s)
{
    if (s->stop_requested) {
        begin_stop(s);
        if (s->nconns == 0)
            goto done;
    } else {
        for (ymo_listener_t *l = s->listeners; l != NULL; l = l->next)
            if (l->fd >= 0)
                ev_io_start(s->loop, &l->io);
    }
    /* The listeners keep the loop alive; the prepare and async watchers
     * are unref'd so they do not. While stopping, connections do. */
    for (;;) {
        ev_run(s->loop, 0);
        if (s->stopping && s->nconns == 0)
            break;
        if (s->stop_requested && !s->stopping) {
            begin_stop(s);
            continue;
        }
        if (s->stopping) {
            /* Nothing left to wait on: close what remains. */
            close_all(s);
            if (s->nconns > 0)
                continue;   /* worker threads still own some */
        }
        break;
    }
done:
    ev_timer_stop(s->loop, &s->stop_timer);
    ymo__conn_reap(s);
    ymo_server_close_listeners(s);
    return 0;
}

void ymo_server_free(ymo_server_t *s)
{
    s->freeing = 1;
    if (s->loop != NULL) {
        close_all(s);
        ymo__conn_reap(s);
    }
    free_listeners(s);
    while (s->free_conns != NULL) {
        ymo_conn_t *c = s->free_conns;
        s->free_conns = c->next;
        free(c);
    }
    while (s->nspare_bufs > 0)
        free(s->spare_bufs[--s->nspare_bufs].data);
    while (s->nspare_outqs > 0) {
        ymo_outq_t *q = &s->spare_outqs[--s->nspare_outqs];
        free(q->data);
        free(q->b);
    }
    while (s->free_headers != NULL) {
        ymo_http_header_t *h = s->free_headers;
        s->free_headers = *(ymo_http_header_t **)h;
        free(h);
    }
    if (s->loop != NULL) {
        ev_ref(s->loop);
        ev_prepare_stop(s->loop, &s->prepare);
        ev_ref(s->loop);
        ev_async_stop(s->loop, &s->wakeup);
        ev_ref(s->loop);
        ev_async_stop(s->loop, &s->checkin_async);
        pthread_mutex_destroy(&s->checkin_lock);
        ymo_server_set_tls(s, NULL);
        pthread_mutex_destroy(&s->tls_lock);
        ev_idle_stop(s->loop, &s->idle);
        ev_loop_destroy(s->loop);
        s->loop = NULL;
    }
}
