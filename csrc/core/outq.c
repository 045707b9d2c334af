/*
 * The output queue: buckets of bytes waiting for writev(). Small pieces
 * (response heads, chunk framing, short bodies) are copied into the queue's
 * own storage, next to each other so that they leave as one iovec; large
 * bodies are referenced, not copied, and their owner is released once sent.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core_internal.h"

static int grow_buckets(ymo_outq_t *q)
{
    if (q->head > 0 && q->head == q->count) {
        q->head = q->count = 0;
    }
    if (q->count < q->cap_b)
        return 0;
    if (q->head > 0) {
        memmove(q->b, q->b + q->head, (q->count - q->head) * sizeof(*q->b));
        q->count -= q->head;
        q->head = 0;
        return 0;
    }
    uint32_t ncap = q->cap_b ? q->cap_b * 2 : 8;
    ymo_bucket_t *nb = realloc(q->b, ncap * sizeof(*nb));
    if (nb == NULL)
        return YMO_E_NOMEM;
    q->b = nb;
    q->cap_b = ncap;
    return 0;
}

/* Every queue is a connection's `out`: the connection goes on the flush
 * list (core.h). A worker thread that owns the connection does not touch
 * the server's lists; check-in puts it there. */
static void queued(ymo_outq_t *q)
{
    ymo_conn_t *c = ymo_container_of(q, ymo_conn_t, out);
    if (!(c->flags & (YMO_CONN_DIRTY | YMO_CONN_CHECKED_OUT | YMO_CONN_CLOSED)))
        ymo__conn_dirty(c);
}

char *ymo_outq_reserve(ymo_outq_t *q, size_t len)
{
    queued(q);
    if (q->len + len > q->cap) {
        size_t ncap = q->cap ? q->cap : 1024;
        while (ncap < q->len + len)
            ncap *= 2;
        char *nd = realloc(q->data, ncap);
        if (nd == NULL)
            return NULL;
        q->data = nd;
        q->cap = ncap;
    }
    /* Extend the last bucket when it ends where the new bytes begin. */
    if (q->count > q->head) {
        ymo_bucket_t *last = &q->b[q->count - 1];
        if (last->ref == NULL && last->fd < 0 && last->base + last->len == q->len) {
            char *p = q->data + q->len;
            last->len += len;
            q->len += len;
            q->bytes += len;
            return p;
        }
    }
    if (grow_buckets(q) < 0)
        return NULL;
    ymo_bucket_t *b = &q->b[q->count++];
    b->base = q->len;
    b->len = len;
    b->ref = NULL;
    b->fd = -1;
    char *p = q->data + q->len;
    q->len += len;
    q->bytes += len;
    return p;
}

int ymo_outq_copy(ymo_outq_t *q, const void *data, size_t len)
{
    if (len == 0)
        return 0;
    char *p = ymo_outq_reserve(q, len);
    if (p == NULL)
        return YMO_E_NOMEM;
    memcpy(p, data, len);
    return 0;
}

int ymo_outq_ref(ymo_outq_t *q, const void *data, size_t len, void *ref)
{
    queued(q);
    if (grow_buckets(q) < 0)
        return YMO_E_NOMEM;
    ymo_bucket_t *b = &q->b[q->count++];
    b->base = (uintptr_t)data;
    b->len = len;
    b->ref = ref;
    b->fd = -1;
    q->bytes += len;
    return 0;
}

int ymo_outq_file(ymo_outq_t *q, int fd, uint64_t offset, size_t len)
{
    queued(q);
    if (grow_buckets(q) < 0) {
        close(fd);
        return YMO_E_NOMEM;
    }
    ymo_bucket_t *b = &q->b[q->count++];
    b->base = (uintptr_t)offset;
    b->len = len;
    b->ref = NULL;
    b->fd = fd;
    q->bytes += len;
    return 0;
}

int ymo__outq_iov(ymo_outq_t *q, struct iovec *iov, int max)
{
    int n = 0;
    for (uint32_t i = q->head; i < q->count && n < max; i++) {
        ymo_bucket_t *b = &q->b[i];
        if (b->fd >= 0)
            break;      /* files go by sendfile, on their own */
        iov[n].iov_base = b->ref ? (void *)b->base : q->data + b->base;
        iov[n].iov_len = b->len;
        n++;
    }
    return n;
}

void ymo__outq_consume(ymo_outq_t *q, size_t n, ymo_server_t *s)
{
    q->bytes -= n;
    while (q->head < q->count) {
        ymo_bucket_t *b = &q->b[q->head];
        if (n < b->len) {
            b->base += n;
            b->len -= n;
            return;
        }
        n -= b->len;
        if (b->ref != NULL)
            s->hooks.release(s, b->ref);
        if (b->fd >= 0)
            close(b->fd);
        q->head++;
    }
    /* Everything went: the copied storage starts over. */
    q->head = q->count = 0;
    q->len = 0;
}

#define SPARE_OUTQ_MAX_DATA 16384u
#define SPARE_OUTQ_MAX_BUCKETS 64u

void ymo__outq_trim(ymo_outq_t *q, ymo_server_t *s)
{
    if (q->bytes != 0 || q->head != q->count || (q->data == NULL && q->b == NULL))
        return;
#ifndef YMO_DEBUG
    /* Plain malloc/free under the sanitizers, as for input buffers. */
    if (s->nspare_outqs < sizeof(s->spare_outqs) / sizeof(s->spare_outqs[0])
        && q->cap <= SPARE_OUTQ_MAX_DATA && q->cap_b <= SPARE_OUTQ_MAX_BUCKETS) {
        q->len = 0;
        q->head = q->count = 0;
        s->spare_outqs[s->nspare_outqs++] = *q;
        memset(q, 0, sizeof(*q));
        return;
    }
#endif
    free(q->b);
    free(q->data);
    memset(q, 0, sizeof(*q));
}

void ymo__outq_adopt(ymo_outq_t *q, ymo_server_t *s)
{
    if (q->data == NULL && q->b == NULL && s->nspare_outqs > 0)
        *q = s->spare_outqs[--s->nspare_outqs];
}

void ymo__outq_free(ymo_outq_t *q, ymo_server_t *s)
{
    for (uint32_t i = q->head; i < q->count; i++) {
        if (q->b[i].ref != NULL)
            s->hooks.release(s, q->b[i].ref);
        if (q->b[i].fd >= 0)
            close(q->b[i].fd);
    }
    free(q->b);
    free(q->data);
    memset(q, 0, sizeof(*q));
}

void ymo_outq_mark(const ymo_outq_t *q, ymo_outq_mark_t *m)
{
    /* Relative to head: adding buckets may slide the array down. */
    m->count = q->count - q->head;
    m->len = q->len;
    m->bytes = q->bytes;
    m->last_len = q->count > q->head ? q->b[q->count - 1].len : 0;
}

void ymo_outq_rollback(ymo_outq_t *q, const ymo_outq_mark_t *m)
{
    q->count = q->head + m->count;
    q->len = m->len;
    q->bytes = m->bytes;
    if (q->count > q->head)
        q->b[q->count - 1].len = m->last_len;
}
