/*
 * permessage-deflate (RFC 7692): the server side of the negotiation and the
 * per-message compressor and decompressor, on zlib raw DEFLATE streams.
 *
 * Window bits: zlib refuses windowBits 8 for raw deflate (since 1.2.9; it
 * used to turn 8 into 9). When a client asks for server_max_window_bits=8
 * we still accept and echo 8, but compress with a 512-byte window and
 * Z_RLE: its matches all have distance 1, which fits any window by the
 * DEFLATE format itself, not by a zlib detail. Our inflater always uses 15:
 * it decodes any smaller window the client picks (RFC 7692 7.1.2.2), so
 * client_max_window_bits is never asked for in the response.
 */
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "yimmo/ws.h"
#include "yimmo/yimmo.h"

/* zlib counts in uInt: feed and drain big messages in slices. */
#define Z_SLICE ((size_t)1 << 30)

/* The output of a first inflate call, before it grows. */
#define INFLATE_START 4096

static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};

struct ymo_ws_deflate_s {
    ymo_ws_deflate_params_t params;
    z_stream in;        /* peer to us */
    z_stream out;       /* us to peer */
    uint8_t in_ready;   /* inflateInit2 done */
    uint8_t out_ready;  /* deflateInit2 done */
};

/* --- Negotiation (RFC 7692 5, 7.1; RFC 6455 9.1) ----------------------- */

/* Extension and parameter names are matched exactly, in the lowercase the
 * RFC registers them with. */

/* tchar (RFC 9110 5.6.2). */
static int is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* A cursor over the header value. */
typedef struct {
    const char *p, *end;
} cur_t;

static void skip_ows(cur_t *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t'))
        c->p++;
}

static int peek(const cur_t *c)
{
    return c->p < c->end ? (unsigned char)*c->p : -1;
}

/* A token: its span, or 0 when there is none. */
static size_t token(cur_t *c, const char **start)
{
    *start = c->p;
    while (c->p < c->end && is_tchar((unsigned char)*c->p))
        c->p++;
    return (size_t)(c->p - *start);
}

/* A value: token or quoted-string (RFC 9110 5.6.4), unescaped into buf.
 * 0 with its full length in *len, or -1 when malformed. Only the first cap
 * bytes are kept: no value we accept is longer than two digits. */
static int value(cur_t *c, char *buf, size_t cap, size_t *len)
{
    size_t n = 0;
    if (peek(c) != '"') {
        const char *s;
        size_t t = token(c, &s);
        if (t == 0)
            return -1;
        for (size_t i = 0; i < t && n < cap; i++)
            buf[n++] = s[i];
        *len = t;
        return 0;
    }
    size_t total = 0;
    c->p++;
    for (;;) {
        int ch = peek(c);
        if (ch < 0)
            return -1;      /* unterminated */
        c->p++;
        if (ch == '"')
            break;
        if (ch == '\\') {
            ch = peek(c);
            /* quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text ) */
            if (ch < 0 || (ch != '\t' && ch < 0x20) || ch == 0x7f)
                return -1;
            c->p++;
        } else if ((ch != '\t' && ch < 0x20) || ch == 0x7f) {
            return -1;      /* not qdtext */
        }
        if (n < cap)
            buf[n++] = (char)ch;
        total++;
    }
    *len = total;
    return 0;
}

static int span_is(const char *s, size_t n, const char *lit)
{
    return strlen(lit) == n && memcmp(s, lit, n) == 0;
}

/* A window size: 8..15, decimal without leading zeros (RFC 7692 7.1.2.1,
 * 7.1.2.2). 0 when invalid. */
static int window_bits(const char *v, size_t n)
{
    if (n == 1 && v[0] >= '8' && v[0] <= '9')
        return v[0] - '0';
    if (n == 2 && v[0] == '1' && v[1] >= '0' && v[1] <= '5')
        return 10 + (v[1] - '0');
    return 0;
}

enum { SEEN_SNCT = 1, SEEN_CNCT = 2, SEEN_SMWB = 4, SEEN_CMWB = 8 };

/* What one offer asks for, as it is parsed. */
typedef struct {
    int is_pmd;             /* the extension is permessage-deflate */
    int ok;                 /* acceptable so far */
    unsigned seen;
    ymo_ws_deflate_params_t params;
} offer_t;

/* One parameter of a permessage-deflate offer (RFC 7692 7.1): an unknown
 * name, a repeat or a bad value declines the offer (RFC 7692 5.1). */
static void offer_param(offer_t *o, const char *name, size_t nlen, int has_value, const char *v,
                        size_t vlen)
{
    unsigned bit;
    if (span_is(name, nlen, "server_no_context_takeover")) {
        bit = SEEN_SNCT;
        if (has_value)
            o->ok = 0;      /* RFC 7692 7.1.1.1: no value */
        o->params.server_no_context_takeover = 1;
    } else if (span_is(name, nlen, "client_no_context_takeover")) {
        bit = SEEN_CNCT;
        if (has_value)
            o->ok = 0;      /* RFC 7692 7.1.1.2: no value */
        o->params.client_no_context_takeover = 1;
    } else if (span_is(name, nlen, "server_max_window_bits")) {
        bit = SEEN_SMWB;
        /* RFC 7692 7.1.2.1: a value is required. */
        int bits = has_value ? window_bits(v, vlen) : 0;
        if (bits == 0)
            o->ok = 0;
        o->params.server_max_window_bits = (uint8_t)bits;
    } else if (span_is(name, nlen, "client_max_window_bits")) {
        bit = SEEN_CMWB;
        /* RFC 7692 7.1.2.2: the value is optional. */
        int bits = has_value ? window_bits(v, vlen) : 15;
        if (bits == 0)
            o->ok = 0;
        o->params.client_max_window_bits = (uint8_t)bits;
    } else {
        o->ok = 0;
        return;
    }
    if (o->seen & bit)
        o->ok = 0;
    o->seen |= bit;
}

/* The response to an accepted offer (RFC 7692 7.1). client_max_window_bits
 * is left out: we inflate with 15 whatever the client uses. 0, or -1 when
 * out is too small. */
static int response(const ymo_ws_deflate_params_t *p, unsigned seen, char *out, size_t outlen)
{
    char buf[128];
    size_t n = 0;
    memcpy(buf, "permessage-deflate", 18);
    n = 18;
    if (p->server_no_context_takeover) {
        memcpy(buf + n, "; server_no_context_takeover", 28);
        n += 28;
    }
    if (p->client_no_context_takeover) {
        memcpy(buf + n, "; client_no_context_takeover", 28);
        n += 28;
    }
    if (seen & SEEN_SMWB) {
        /* RFC 7692 7.1.2.1: accepted by echoing the same value. */
        memcpy(buf + n, "; server_max_window_bits=", 25);
        n += 25;
        if (p->server_max_window_bits >= 10)
            buf[n++] = '1';
        buf[n++] = (char)('0' + p->server_max_window_bits % 10);
    }
    if (n + 1 > outlen)
        return -1;
    memcpy(out, buf, n);
    out[n] = '\0';
    return 0;
}

int ymo_ws_deflate_negotiate(const char *offer, size_t len, ymo_ws_deflate_params_t *params,
                             char *out, size_t outlen)
{
    static const ymo_ws_deflate_params_t defaults = {0, 0, 15, 15};
    cur_t c = {offer, offer + len};
    offer_t o;
    int accepted = 0, elements = 0;
    unsigned accepted_seen = 0;

    *params = defaults;
    if (outlen > 0)
        out[0] = '\0';

    /* extension-list = 1#extension (RFC 6455 9.1); the whole value must
     * parse, and empty list elements are skipped (RFC 9110 5.6.1.2). */
    for (;;) {
        skip_ows(&c);
        if (peek(&c) == ',') {
            c.p++;
            continue;
        }
        if (peek(&c) < 0)
            break;

        /* extension = extension-token *( ";" extension-param ) */
        const char *name;
        size_t nlen = token(&c, &name);
        if (nlen == 0)
            return YMO_E_BAD_HEADER_VALUE;
        elements++;
        memset(&o, 0, sizeof(o));
        o.params = defaults;
        o.is_pmd = span_is(name, nlen, "permessage-deflate");
        o.ok = 1;
        for (;;) {
            skip_ows(&c);
            if (peek(&c) != ';')
                break;
            c.p++;
            skip_ows(&c);
            /* extension-param = token [ "=" ( token / quoted-string ) ] */
            const char *pname;
            size_t plen = token(&c, &pname);
            if (plen == 0)
                return YMO_E_BAD_HEADER_VALUE;
            skip_ows(&c);
            char v[8];
            size_t vlen = 0;
            int has_value = 0;
            if (peek(&c) == '=') {
                c.p++;
                skip_ows(&c);
                if (value(&c, v, sizeof(v), &vlen) < 0)
                    return YMO_E_BAD_HEADER_VALUE;
                has_value = 1;
            }
            if (o.is_pmd)
                offer_param(&o, pname, plen, has_value, v, vlen);
        }
        if (peek(&c) >= 0 && peek(&c) != ',')
            return YMO_E_BAD_HEADER_VALUE;

        /* The first acceptable offer wins (RFC 7692 5.1); the rest of the
         * header is still checked. */
        if (!accepted && o.is_pmd && o.ok) {
            accepted = 1;
            accepted_seen = o.seen;
            *params = o.params;
        }
    }
    if (elements == 0)
        return YMO_E_BAD_HEADER_VALUE;
    if (!accepted)
        return 0;
    if (response(params, accepted_seen, out, outlen) < 0) {
        /* No room for the answer: declining is always allowed. */
        *params = defaults;
        if (outlen > 0)
            out[0] = '\0';
        return 0;
    }
    return 1;
}

/* --- Streams ------------------------------------------------------------ */

ymo_ws_deflate_t *ymo_ws_deflate_new(const ymo_ws_deflate_params_t *params)
{
    ymo_ws_deflate_t *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    d->params = *params;
    if (d->params.server_max_window_bits < 8 || d->params.server_max_window_bits > 15)
        d->params.server_max_window_bits = 15;
    /* The streams themselves (some 256 KiB for a full deflate window) wait
     * for the first compressed message each way. */
    return d;
}

void ymo_ws_deflate_free(ymo_ws_deflate_t *d)
{
    if (d == NULL)
        return;
    if (d->in_ready)
        inflateEnd(&d->in);
    if (d->out_ready)
        deflateEnd(&d->out);
    free(d);
}

static int inflate_ready(ymo_ws_deflate_t *d)
{
    if (d->in_ready)
        return 0;
    /* Raw DEFLATE (RFC 7692 7.2), the largest window: it reads any
     * client_max_window_bits. */
    if (inflateInit2(&d->in, -15) != Z_OK)
        return -1;
    d->in_ready = 1;
    return 0;
}

static int deflate_ready(ymo_ws_deflate_t *d)
{
    if (d->out_ready)
        return 0;
    int bits = d->params.server_max_window_bits;
    int strategy = Z_DEFAULT_STRATEGY;
    if (bits == 8) {
        /* zlib has no raw 256-byte window: run-length matches only
         * reach one byte back, so they fit the client's (see the top). */
        bits = 9;
        strategy = Z_RLE;
    }
    if (deflateInit2(&d->out, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -bits, 8, strategy) != Z_OK)
        return -1;
    d->out_ready = 1;
    return 0;
}

/* A final block ended the stream (RFC 7692 7.2.3.3): the next message
 * starts a new one, but with context takeover it may still refer to this
 * window, so keep it. */
static int inflate_restart(ymo_ws_deflate_t *d)
{
    if (d->params.client_no_context_takeover)
        return inflateReset(&d->in) == Z_OK ? 0 : -1;
    uint8_t *win = malloc(32768);
    uInt n = 0;
    if (win == NULL)
        return -1;
    int r = inflateGetDictionary(&d->in, win, &n) == Z_OK && inflateReset(&d->in) == Z_OK
            && (n == 0 || inflateSetDictionary(&d->in, win, n) == Z_OK);
    free(win);
    return r ? 0 : -1;
}

/* Returns close codes, as the session sends them: out of memory is 1011
 * (RFC 6455 7.4.1), not YMO_E_NOMEM. */
int ymo_ws_inflate(ymo_ws_deflate_t *d, const uint8_t *in, size_t inlen, uint64_t max,
                   uint8_t **out, size_t *outlen)
{
    z_stream *z = &d->in;
    uint8_t *buf = NULL;
    size_t cap = 0, len = 0, left = inlen;
    const uint8_t *next = in;
    int tail_fed = 0, code;
    /* One byte past max is the most we ever make room for: producing it
     * proves the message too big, without inflating the rest. */
    size_t limit = max >= (uint64_t)SIZE_MAX ? SIZE_MAX : (size_t)max + 1;

    *out = NULL;
    *outlen = 0;
    if (inlen == 0) {
        /* Not a DEFLATE stream at all, but what some senders make of an
         * empty message (RFC 7692 7.2.3.6 says 0x00): read it as empty,
         * leaving the stream untouched. */
        *out = malloc(1);
        return *out == NULL ? YMO_WS_INTERNAL : 0;
    }
    if (inflate_ready(d) < 0)
        return YMO_WS_INTERNAL;

    cap = inlen < INFLATE_START / 4 ? INFLATE_START : (inlen > SIZE_MAX / 4 ? SIZE_MAX : inlen * 4);
    if (cap > limit)
        cap = limit;
    buf = malloc(cap);
    if (buf == NULL)
        return YMO_WS_INTERNAL;
    z->next_out = buf;
    z->avail_out = (uInt)(cap < Z_SLICE ? cap : Z_SLICE);
    z->avail_in = 0;

    for (;;) {
        if (z->avail_in == 0) {
            if (left > 0) {
                size_t n = left < Z_SLICE ? left : Z_SLICE;
                z->next_in = (Bytef *)(uintptr_t)next;
                z->avail_in = (uInt)n;
                next += n;
                left -= n;
            } else if (!tail_fed) {
                /* RFC 7692 7.2.2: the sender took these off. */
                z->next_in = (Bytef *)(uintptr_t)tail;
                z->avail_in = sizeof(tail);
                tail_fed = 1;
            }
        }
        if (z->avail_out == 0) {
            len = (size_t)(z->next_out - buf);
            if (len == cap) {
                if (cap == limit) {
                    code = YMO_WS_TOO_BIG;     /* more than max bytes */
                    goto fail;
                }
                size_t ncap = cap > limit / 2 ? limit : cap * 2;
                uint8_t *nb = realloc(buf, ncap);
                if (nb == NULL) {
                    code = YMO_WS_INTERNAL;
                    goto fail;
                }
                buf = nb;
                cap = ncap;
            }
            z->next_out = buf + len;
            z->avail_out = (uInt)(cap - len < Z_SLICE ? cap - len : Z_SLICE);
        }

        int r = inflate(z, Z_SYNC_FLUSH);
        if (r == Z_STREAM_END) {
            /* A final block (RFC 7692 7.2.3.3): nothing of the payload may
             * follow it; what is left of our tail does not matter. */
            if (left > 0 || (!tail_fed && z->avail_in > 0)) {
                code = YMO_WS_INVALID_DATA;
                goto fail;
            }
            len = (size_t)(z->next_out - buf);
            if (inflate_restart(d) < 0) {
                code = YMO_WS_INTERNAL;
                goto fail;
            }
            break;
        }
        if (r == Z_MEM_ERROR) {
            code = YMO_WS_INTERNAL;
            goto fail;
        }
        if (r != Z_OK && r != Z_BUF_ERROR) {
            code = YMO_WS_INVALID_DATA;         /* Z_DATA_ERROR, Z_NEED_DICT */
            goto fail;
        }
        /* Z_BUF_ERROR only means no progress: the checks here and at the
         * top of the loop decide what comes next. */
        if (tail_fed && z->avail_in == 0 && z->avail_out > 0) {
            /* All input read with room to spare: the message is out. It
             * must end between blocks, as the tail's empty stored block
             * leaves it (RFC 7692 7.2.1); otherwise it was cut short. */
            if (!(z->data_type & 128)) {
                code = YMO_WS_INVALID_DATA;
                goto fail;
            }
            len = (size_t)(z->next_out - buf);
            if (d->params.client_no_context_takeover && inflateReset(z) != Z_OK) {
                code = YMO_WS_INTERNAL;
                goto fail;
            }
            break;
        }
    }
    if (len > max) {
        code = YMO_WS_TOO_BIG;
        goto fail;
    }
    z->next_in = z->next_out = NULL;
    *out = buf;
    *outlen = len;
    return 0;

fail:
    /* The connection is closing; leave the stream clean all the same. */
    free(buf);
    z->next_in = z->next_out = NULL;
    z->avail_in = z->avail_out = 0;
    inflateReset(z);
    return code;
}

int ymo_ws_deflate(ymo_ws_deflate_t *d, const uint8_t *in, size_t inlen, uint8_t **out,
                   size_t *outlen)
{
    z_stream *z = &d->out;
    uint8_t *buf;
    size_t cap, len, left = inlen;
    const uint8_t *next = in;

    *out = NULL;
    *outlen = 0;
    if (inlen == 0) {
        /* RFC 7692 7.2.3.6: an empty message is one 0x00 byte, an empty
         * stored block with its tail removed. zlib itself would answer
         * nothing (Z_BUF_ERROR) after an earlier flush, so write it here;
         * the stream stays byte-aligned between blocks either way. */
        buf = malloc(1);
        if (buf == NULL)
            return YMO_E_NOMEM;
        buf[0] = 0x00;
        *out = buf;
        *outlen = 1;
        return 0;
    }
    if (deflate_ready(d) < 0)
        return YMO_E_NOMEM;

    /* Room for the worst case plus the flush's empty stored block. */
    uLong bound = deflateBound(z, (uLong)(inlen < Z_SLICE ? inlen : Z_SLICE));
    cap = (size_t)bound + 16;
    buf = malloc(cap);
    if (buf == NULL)
        goto fail;
    z->next_out = buf;
    z->avail_out = (uInt)(cap < Z_SLICE ? cap : Z_SLICE);
    z->avail_in = 0;

    for (;;) {
        if (z->avail_in == 0 && left > 0) {
            size_t n = left < Z_SLICE ? left : Z_SLICE;
            z->next_in = (Bytef *)(uintptr_t)next;
            z->avail_in = (uInt)n;
            next += n;
            left -= n;
        }
        if (z->avail_out == 0) {
            len = (size_t)(z->next_out - buf);
            if (len == cap) {
                if (cap > SIZE_MAX / 2)
                    goto fail;
                uint8_t *nb = realloc(buf, cap * 2);
                if (nb == NULL)
                    goto fail;
                buf = nb;
                cap *= 2;
            }
            z->next_out = buf + len;
            z->avail_out = (uInt)(cap - len < Z_SLICE ? cap - len : Z_SLICE);
        }
        /* RFC 7692 7.2.1: end the message on a byte boundary with an empty
         * stored block. */
        int flush = left == 0 ? Z_SYNC_FLUSH : Z_NO_FLUSH;
        int r = deflate(z, flush);
        if (r != Z_OK && r != Z_BUF_ERROR)
            goto fail;
        if (flush == Z_SYNC_FLUSH && z->avail_in == 0 && z->avail_out > 0)
            break;
    }
    len = (size_t)(z->next_out - buf);
    /* RFC 7692 7.2.1: remove the 00 00 ff ff the flush ended with. */
    if (len < 4 || memcmp(buf + len - 4, tail, 4) != 0)
        goto fail;
    len -= 4;
    if (d->params.server_no_context_takeover && deflateReset(z) != Z_OK)
        goto fail;
    z->next_in = z->next_out = NULL;
    *out = buf;
    *outlen = len;
    return 0;

fail:
    /* Part of this message may be in the window but never reach the peer:
     * start over, which a peer with any window still decodes. */
    free(buf);
    z->next_in = z->next_out = NULL;
    z->avail_in = z->avail_out = 0;
    deflateReset(z);
    return YMO_E_NOMEM;
}
