/* Cross-file internals of the engine (csrc/core). */
#ifndef YMO_CORE_INTERNAL_H
#define YMO_CORE_INTERNAL_H

#include "yimmo/core.h"

#define YMO_IOV_MAX 64

#define ymo_container_of(ptr, type, member) \
    ((type *)((char *)(ptr) - offsetof(type, member)))

/* Fill iov from the queue's pending buckets; returns how many. */
int ymo__outq_iov(ymo_outq_t *q, struct iovec *iov, int max);
/* n bytes were written: drop them, releasing finished buckets' owners. */
void ymo__outq_consume(ymo_outq_t *q, size_t n, ymo_server_t *s);
/* The first pending bucket. */
static inline ymo_bucket_t *ymo__outq_first(ymo_outq_t *q)
{
    return q->head < q->count ? &q->b[q->head] : NULL;
}
/* Give the storage of an empty queue to the server's small cache (or free
 * it): an idle connection costs bytes, a busy one no malloc per response. */
void ymo__outq_trim(ymo_outq_t *q, ymo_server_t *s);
/* Take storage from that cache for a queue that has none. */
void ymo__outq_adopt(ymo_outq_t *q, ymo_server_t *s);
/* Release every bucket and the storage. */
void ymo__outq_free(ymo_outq_t *q, ymo_server_t *s);

/* A new connection on an accepted socket, or NULL (fd is then closed). */
ymo_conn_t *ymo__conn_new(ymo_server_t *s, int fd, const struct sockaddr *peer,
                          socklen_t peer_len);
/* Free connections closed during the last loop iteration. */
void ymo__conn_reap(ymo_server_t *s);
/* Put c on the server's flush list (output was queued on the loop thread). */
void ymo__conn_dirty(ymo_conn_t *c);
/* Give back input buffer room beyond cap, when what it holds fits. */
void ymo__conn_shrink_input(ymo_conn_t *c, size_t cap);

extern const ymo_transport_t ymo__plain_transport;
extern const ymo_proto_t ymo__http_proto;

/* The HTTP protocol's handling of a ready connection (csrc/http). */
void ymo__http_run(ymo_conn_t *c);
/* Start serving HTTP on a new connection. */
int ymo__http_attach(ymo_conn_t *c);
/* A worker thread gave c back: finish its exchange on the loop. */
void ymo__http_checkin(ymo_conn_t *c);

/* Log through the server's hook, printf-style. */
void ymo__log(ymo_server_t *s, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A connection closed: accept again if max_connections paused it. */
void ymo__server_conn_closed(ymo_server_t *s);
void ymo__server_keep_polling(ymo_server_t *s);

/* The server has been asked to stop and c has nothing in flight: close it. */
void ymo__server_conn_idle(ymo_server_t *s, ymo_conn_t *c);

#endif
