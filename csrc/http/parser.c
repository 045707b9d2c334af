/*
 * The HTTP/1.x request parser (RFC 9112): a resumable state machine.
 *
 * ymo_http_parse_head() is given the whole request so far every time, but it
 * resumes at p->pos and never looks at a byte twice (except the few bytes of
 * a finished field value, read once more to interpret framing fields). Every
 * result is a span into the caller's buffer; nothing is allocated.
 *
 * Strict by default: bare CR and bare LF, obs-fold, whitespace before a
 * colon, ambiguous framing and unknown transfer codings are all refused,
 * each with its own sticky error code.
 */
#include "yimmo/http.h"

#include <string.h>

/* Character classes (one byte per character, a bit per class). */
#define C_TCHAR 0x01  /* token character, RFC 9110 5.6.2 */
#define C_TARGET 0x02 /* visible ASCII but '#': request-target and query */
#define C_PATH 0x04   /* as C_TARGET, without '?' */
#define C_VALUE 0x08  /* field-vchar, SP, HTAB and obs-text, RFC 9110 5.5 */
#define C_HEX 0x10    /* HEXDIG */
#define C_AUTH 0x20   /* authority without userinfo, RFC 3986 3.2 */
#define C_SCHEME 0x40 /* scheme characters after the first, RFC 3986 3.1 */
#define C_QDTEXT 0x80 /* qdtext, RFC 9110 5.6.4 */

static const uint8_t cls[256] = {
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x88, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  /* 00 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  /* 10 */
    0x88, 0xaf, 0x0e, 0x89, 0xaf, 0xaf, 0xaf, 0xaf, 0xae, 0xae, 0xaf, 0xef, 0xae, 0xef, 0xef, 0x8e,  /* 20 */
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xae, 0xae, 0x8e, 0xae, 0x8e, 0x8a,  /* 30 */
    0x8e, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef,  /* 40 */
    0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xae, 0x0e, 0xae, 0x8f, 0xaf,  /* 50 */
    0x8f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef,  /* 60 */
    0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0x8e, 0x8f, 0x8e, 0xaf, 0x00,  /* 70 */
    0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88,  /* 80 */
    0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88,  /* 90 */
    0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88,  /* a0 */
    0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88,  /* b0 */
    0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88,  /* c0 */
    0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88,  /* d0 */
    0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88,  /* e0 */
    0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88,  /* f0 */
};

#define IS(c, k) (cls[(uint8_t)(c)] & (k))

/* Empty lines ignored before a request line (RFC 9112 2.2 asks for at least one). */
#define MAX_EMPTY_LINES 4

/* A chunk-size line (size and extensions) longer than this is refused. */
#define MAX_CHUNK_LINE 4096

/* Head states. Those before H_RL_CR are on the request line. */
enum {
    H_START = 0,
    H_EMPTY_LF,
    H_METHOD,
    H_TARGET,
    H_PATH,
    H_QUERY,
    H_STAR,
    H_SCHEME,
    H_SLASH1,
    H_SLASH2,
    H_HOST,
    H_AUTHORITY,
    H_VERSION,
    H_MAJOR,
    H_DOT,
    H_MINOR,
    H_RL_CR,
    H_RL_LF,
    H_FIELD_START,
    H_NAME,
    H_OWS,
    H_VALUE,
    H_FIELD_LF,
    H_HEAD_LF,
    H_DONE
};

/* Body states. */
enum {
    B_NONE = 0, /* no head yet */
    B_DONE,
    B_LENGTH,
    B_SIZE_START,
    B_SIZE,
    B_EXT_BWS,      /* BWS after the size or a value, before ';' */
    B_EXT_NAME_BWS, /* after ';' */
    B_EXT_NAME,
    B_EXT_NAME_END, /* BWS after a name, before '=' or ';' */
    B_EXT_VAL_BWS,  /* after '=' */
    B_EXT_TOKEN,
    B_EXT_QUOTED,
    B_EXT_QPAIR,
    B_EXT_QEND,
    B_SIZE_LF,
    B_DATA,
    B_DATA_CR,
    B_DATA_LF,
    B_TRAILER_START,
    B_TRAILER_NAME,
    B_TRAILER_VALUE,
    B_TRAILER_LF,
    B_END_LF
};

/* Facts gathered from fields while scanning (p->aux). */
#define A_TE_CHUNKED 0x01    /* chunked was listed */
#define A_TE_LAST 0x02       /* the last coding so far is chunked */
#define A_TE_OTHER 0x04      /* some other coding was listed */
#define A_CONN_CLOSE 0x08
#define A_CONN_KEEPALIVE 0x10
#define A_CONN_UPGRADE 0x20
#define A_EXPECT 0x40        /* Expect: 100-continue */
#define A_OPTIONS 0x80       /* the method is OPTIONS */

#define SEEN(id) (1u << (id))

static inline uint8_t lower(uint8_t c)
{
    return (uint8_t)(c + ((unsigned)(c - 'A') < 26u) * 32u);
}

static inline unsigned hexval(uint8_t c)
{
    return c <= '9' ? (unsigned)(c - '0') : (unsigned)((c | 0x20) - 'a' + 10);
}

/* Case-insensitive match of s[0..n) against a lowercase literal. */
static int ieq(const uint8_t *s, size_t n, const char *lit, size_t litn)
{
    if (n != litn)
        return 0;
    for (size_t k = 0; k < n; k++)
        if (lower(s[k]) != (uint8_t)lit[k])
            return 0;
    return 1;
}

#define LIT(s) s, sizeof(s) - 1

void ymo_http_limits_default(ymo_http_limits_t *limits)
{
    limits->max_request_line = YMO_HTTP_DEFAULT_MAX_REQUEST_LINE;
    limits->max_field_size = YMO_HTTP_DEFAULT_MAX_FIELD_SIZE;
    limits->max_header_bytes = YMO_HTTP_DEFAULT_MAX_HEADER_BYTES;
    limits->max_headers = YMO_HTTP_DEFAULT_MAX_HEADERS;
    limits->max_body = YMO_HTTP_DEFAULT_MAX_BODY;
}

void ymo_http_parser_init(ymo_http_parser_t *p, const ymo_http_limits_t *limits,
                          ymo_http_header_t *headers)
{
    memset(p, 0, sizeof(*p));
    p->limits = limits;
    p->headers = headers;
    p->state = H_START;
    p->body_state = B_NONE;
}

/* Names are already lowercase here; compare by length first. */
static uint32_t header_id(const uint8_t *s, uint32_t n)
{
    switch (n) {
    case 4:
        return memcmp(s, "host", 4) == 0 ? YMO_HDR_HOST : YMO_HDR_OTHER;
    case 6:
        return memcmp(s, "expect", 6) == 0 ? YMO_HDR_EXPECT : YMO_HDR_OTHER;
    case 7:
        return memcmp(s, "upgrade", 7) == 0 ? YMO_HDR_UPGRADE : YMO_HDR_OTHER;
    case 10:
        return memcmp(s, "connection", 10) == 0 ? YMO_HDR_CONNECTION : YMO_HDR_OTHER;
    case 12:
        return memcmp(s, "content-type", 12) == 0 ? YMO_HDR_CONTENT_TYPE : YMO_HDR_OTHER;
    case 14:
        return memcmp(s, "content-length", 14) == 0 ? YMO_HDR_CONTENT_LENGTH : YMO_HDR_OTHER;
    case 17:
        return memcmp(s, "transfer-encoding", 17) == 0 ? YMO_HDR_TRANSFER_ENCODING
                                                        : YMO_HDR_OTHER;
    default:
        return YMO_HDR_OTHER;
    }
}

/*
 * Content-Length = 1*DIGIT (RFC 9112 6.3 and RFC 9110 8.6). A list, even of
 * equal values, is refused: a proxy in front may have picked another member.
 */
static int parse_content_length(ymo_http_parser_t *p, const uint8_t *s, uint32_t n)
{
    uint64_t v = 0;
    if (n == 0)
        return YMO_E_BAD_CONTENT_LENGTH;
    for (uint32_t k = 0; k < n; k++) {
        uint8_t c = s[k];
        if (c == ',')
            return YMO_E_DUPLICATE_CONTENT_LENGTH;
        if ((unsigned)(c - '0') > 9u)
            return YMO_E_BAD_CONTENT_LENGTH;
        unsigned d = (unsigned)(c - '0');
        if (v > UINT64_MAX / 10 || (v == UINT64_MAX / 10 && d > UINT64_MAX % 10))
            return YMO_E_BAD_CONTENT_LENGTH;
        v = v * 10 + d;
    }
    p->content_length = v;
    return YMO_OK;
}

/*
 * Walk a comma-separated list (RFC 9110 5.6.1), calling on_elem for every
 * non-empty element with its surrounding whitespace removed. Empty elements
 * are ignored, as 5.6.1 requires of recipients.
 */
typedef int (*elem_fn)(ymo_http_parser_t *p, const uint8_t *s, size_t n);

static int walk_list(ymo_http_parser_t *p, const uint8_t *s, size_t n, elem_fn on_elem)
{
    size_t k = 0;
    while (k < n) {
        while (k < n && (s[k] == ' ' || s[k] == '\t' || s[k] == ','))
            k++;
        size_t start = k;
        while (k < n && s[k] != ',')
            k++;
        size_t end = k;
        while (end > start && (s[end - 1] == ' ' || s[end - 1] == '\t'))
            end--;
        if (end > start) {
            int err = on_elem(p, s + start, end - start);
            if (err != YMO_OK)
                return err;
        }
    }
    return YMO_OK;
}

/* RFC 9112 6.1: transfer codings, applied in order; chunked at most once. */
static int te_elem(ymo_http_parser_t *p, const uint8_t *s, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (!IS(s[k], C_TCHAR))
            return YMO_E_BAD_TRANSFER_ENCODING;
    if (ieq(s, n, LIT("chunked"))) {
        /* RFC 9112 7: chunked must not be applied more than once. */
        if (p->aux & A_TE_CHUNKED)
            return YMO_E_BAD_TRANSFER_ENCODING;
        p->aux |= A_TE_CHUNKED | A_TE_LAST;
    } else {
        p->aux = (p->aux & ~(uint32_t)A_TE_LAST) | A_TE_OTHER;
    }
    return YMO_OK;
}

/* RFC 9110 7.6.1: Connection options are case-insensitive tokens. */
static int conn_elem(ymo_http_parser_t *p, const uint8_t *s, size_t n)
{
    if (ieq(s, n, LIT("close")))
        p->aux |= A_CONN_CLOSE;
    else if (ieq(s, n, LIT("keep-alive")))
        p->aux |= A_CONN_KEEPALIVE;
    else if (ieq(s, n, LIT("upgrade")))
        p->aux |= A_CONN_UPGRADE;
    return YMO_OK;
}

/* RFC 9110 10.1.1: Expect is a list; 100-continue is the only expectation
 * defined, and others are ignored (a server MAY answer them 417). */
static int expect_elem(ymo_http_parser_t *p, const uint8_t *s, size_t n)
{
    if (ieq(s, n, LIT("100-continue")))
        p->aux |= A_EXPECT;
    return YMO_OK;
}

/* RFC 9110 7.2: Host = uri-host [ ":" port ], uri-host being an IP-literal
 * in brackets, an IPv4 address or a reg-name (RFC 3986 3.2.2). An empty
 * value is allowed (no authority). */
static int valid_host(const uint8_t *v, uint32_t n)
{
    uint32_t i = 0;
    if (n > 0 && v[0] == '[') {
        for (i = 1; i < n && v[i] != ']'; i++)
            if (!IS(v[i], C_HEX) && v[i] != ':' && v[i] != '.' && v[i] != 'v' && v[i] != 'V')
                return 0;
        if (i == n || i == 1)
            return 0;
        i++;
    } else {
        for (; i < n && v[i] != ':'; i++) {
            if (!IS(v[i], C_AUTH) || v[i] == '[' || v[i] == ']')
                return 0;
            if (v[i] == '%' && (i + 2 >= n || !IS(v[i + 1], C_HEX) || !IS(v[i + 2], C_HEX)))
                return 0;
        }
    }
    if (i < n) {
        if (v[i] != ':')
            return 0;
        for (i++; i < n; i++)
            if (v[i] < '0' || v[i] > '9')
                return 0;
    }
    return 1;
}

/* Act on a complete field line whose id the engine cares about. */
static int on_field(ymo_http_parser_t *p, const uint8_t *buf, const ymo_http_header_t *h)
{
    const uint8_t *v = buf + h->value.off;
    uint32_t n = h->value.len;
    int err = YMO_OK;

    switch (h->id) {
    case YMO_HDR_OTHER:
        return YMO_OK;
    case YMO_HDR_HOST:
        /* RFC 9112 3.2: more than one Host field line is a 400. */
        if (p->seen & SEEN(YMO_HDR_HOST))
            return YMO_E_DUPLICATE_HOST;
        if (!valid_host(v, n))
            return YMO_E_BAD_HOST;
        break;
    case YMO_HDR_CONTENT_LENGTH:
        if (p->seen & SEEN(YMO_HDR_CONTENT_LENGTH))
            return YMO_E_DUPLICATE_CONTENT_LENGTH;
        err = parse_content_length(p, v, n);
        break;
    case YMO_HDR_TRANSFER_ENCODING:
        /* Several fields form one list (RFC 9110 5.3). */
        err = walk_list(p, v, n, te_elem);
        break;
    case YMO_HDR_CONNECTION:
        err = walk_list(p, v, n, conn_elem);
        break;
    case YMO_HDR_EXPECT:
        err = walk_list(p, v, n, expect_elem);
        break;
    default:
        break;
    }
    p->seen |= SEEN(h->id);
    return err;
}

/* The head is complete: decide framing and persistence. */
static int finish_head(ymo_http_parser_t *p)
{
    const ymo_http_limits_t *lim = p->limits;
    int http11 = p->version_minor >= 1;

    /* RFC 9112 3.2: an HTTP/1.1 request without Host is a 400. */
    if (http11 && !(p->seen & SEEN(YMO_HDR_HOST)))
        return YMO_E_MISSING_HOST;

    if (p->seen & SEEN(YMO_HDR_TRANSFER_ENCODING)) {
        /* RFC 9112 6.3: both framings at once smells of smuggling; refuse. */
        if (p->seen & SEEN(YMO_HDR_CONTENT_LENGTH))
            return YMO_E_CONTENT_LENGTH_AND_CHUNKED;
        /* RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing. */
        if (!http11)
            return YMO_E_BAD_TRANSFER_ENCODING;
        /* RFC 9112 6.3: chunked must be the final coding, else 400. */
        if (!(p->aux & A_TE_LAST))
            return YMO_E_BAD_TRANSFER_ENCODING;
        /* RFC 9112 6.1: codings we do not implement are a 501. */
        if (p->aux & A_TE_OTHER)
            return YMO_E_UNKNOWN_TRANSFER_CODING;
        p->flags |= YMO_HTTP_F_CHUNKED;
        p->body_state = B_SIZE_START;
    } else if (p->seen & SEEN(YMO_HDR_CONTENT_LENGTH)) {
        if (p->content_length > lim->max_body)
            return YMO_E_BODY_TOO_LARGE;
        p->flags |= YMO_HTTP_F_CONTENT_LENGTH;
        p->body_left = p->content_length;
        p->body_state = B_LENGTH;
    } else {
        /* RFC 9112 6.3: a request with neither has no content. */
        p->body_state = B_DONE;
    }

    /* RFC 9112 9.3: 1.1 persists unless "close"; 1.0 only with "keep-alive". */
    if (!(p->aux & A_CONN_CLOSE) && (http11 || (p->aux & A_CONN_KEEPALIVE)))
        p->flags |= YMO_HTTP_F_KEEPALIVE;
    /* RFC 9110 10.1.1: a 100-continue in HTTP/1.0 must be ignored. */
    if (http11 && (p->aux & A_EXPECT))
        p->flags |= YMO_HTTP_F_EXPECT_CONTINUE;
    /* RFC 9110 7.8: Upgrade needs the "upgrade" option, and 1.1. */
    if (http11 && (p->aux & A_CONN_UPGRADE) && (p->seen & SEEN(YMO_HDR_UPGRADE)))
        p->flags |= YMO_HTTP_F_UPGRADE;
    return YMO_OK;
}

/* RFC 9112 3.2.3: authority-form is uri-host ":" port, with no userinfo. */
static int check_authority_form(const uint8_t *s, uint32_t n)
{
    uint32_t colon = n;
    for (uint32_t k = n; k > 0; k--) {
        if (s[k - 1] == ':') {
            colon = k - 1;
            break;
        }
    }
    if (colon == n || colon == 0 || colon + 1 == n || !valid_host(s, n))
        return YMO_E_BAD_TARGET;
    return YMO_OK;
}

/*
 * After a tight loop stopped at i: wait for more bytes, or refuse a byte past
 * the head limit before looking at it, so that where the input was split
 * never changes which error is reported.
 */
#define SCAN_END()                                                                         \
    do {                                                                                   \
        if (i == len)                                                                      \
            goto again;                                                                    \
        if (i >= head_max) {                                                               \
            err = YMO_E_HEADERS_TOO_LARGE;                                                 \
            goto fail;                                                                     \
        }                                                                                  \
    } while (0)

static inline size_t min_sz(size_t a, uint64_t b)
{
    return (uint64_t)a < b ? a : (size_t)b;
}

int ymo_http_parse_head(ymo_http_parser_t *p, char *buf, size_t len)
{
    uint8_t *b = (uint8_t *)buf;
    const ymo_http_limits_t *lim = p->limits;
    size_t i = p->pos;
    int err;

    if (p->error != YMO_OK)
        return p->error;
    if (p->state == H_DONE)
        return YMO_OK;

    /* Nothing past the head limit is ever read, so offsets fit in 32 bits. */
    const size_t head_max = lim->max_header_bytes;

    while (i < len) {
        /* The whole head, line ends included, is bounded (431). */
        if (i >= head_max) {
            err = YMO_E_HEADERS_TOO_LARGE;
            goto fail;
        }
        uint8_t c = b[i];
        /* Content bytes of the current line may not reach these. */
        uint64_t rl_end = (uint64_t)p->line_start + lim->max_request_line;
        uint64_t fl_end = (uint64_t)p->line_start + lim->max_field_size;

        switch (p->state) {
        case H_START:
            if (c == '\r') {
                /* RFC 9112 2.2: ignore a few empty lines before a request. */
                if (p->line_start >= 2 * MAX_EMPTY_LINES) {
                    err = YMO_E_BAD_METHOD;
                    goto fail;
                }
                p->state = H_EMPTY_LF;
                i++;
                continue;
            }
            if (!IS(c, C_TCHAR)) {
                err = c == '\n' ? YMO_E_BARE_LF : YMO_E_BAD_METHOD;
                goto fail;
            }
            if (i >= rl_end) {
                err = YMO_E_REQUEST_LINE_TOO_LONG;
                goto fail;
            }
            p->method.off = (uint32_t)i;
            p->state = H_METHOD;
            i++;
            continue;

        case H_EMPTY_LF:
            if (c != '\n') {
                err = YMO_E_BARE_CR;
                goto fail;
            }
            i++;
            p->line_start = (uint32_t)i;
            p->state = H_START;
            continue;

        case H_METHOD: {
            /* RFC 9112 3.1: method is a token, then exactly one SP. */
            size_t stop = min_sz(min_sz(len, rl_end), head_max);
            while (i < stop && IS(b[i], C_TCHAR))
                i++;
            SCAN_END();
            c = b[i];
            if (c != ' ') {
                if (IS(c, C_TCHAR)) {
                    /* RFC 9112 3: a method longer than any implemented is
                     * 501, not a target too long. */
                    err = i >= head_max ? YMO_E_HEADERS_TOO_LARGE : YMO_E_METHOD_TOO_LONG;
                    goto fail;
                }
                err = YMO_E_BAD_METHOD;
                goto fail;
            }
            p->method.len = (uint32_t)(i - p->method.off);
            const uint8_t *m = b + p->method.off;
            if (p->method.len == 4 && memcmp(m, "HEAD", 4) == 0)
                p->flags |= YMO_HTTP_F_HEAD;
            else if (p->method.len == 7 && memcmp(m, "CONNECT", 7) == 0)
                p->flags |= YMO_HTTP_F_CONNECT;
            else if (p->method.len == 7 && memcmp(m, "OPTIONS", 7) == 0)
                p->aux |= A_OPTIONS;
            p->state = H_TARGET;
            i++;
            continue;
        }

        case H_TARGET:
            if (i >= rl_end)
                goto line_limit;
            p->target.off = (uint32_t)i;
            if (p->flags & YMO_HTTP_F_CONNECT) {
                /* RFC 9112 3.2.3: CONNECT takes authority-form only. */
                p->state = H_AUTHORITY;
                continue;
            }
            if (c == '/') {
                /* RFC 9112 3.2.1: origin-form. */
                p->path.off = (uint32_t)i;
                p->state = H_PATH;
                i++;
                continue;
            }
            if (c == '*' && (p->aux & A_OPTIONS)) {
                /* RFC 9112 3.2.4: asterisk-form, for OPTIONS only. */
                p->path.off = (uint32_t)i;
                p->state = H_STAR;
                i++;
                continue;
            }
            if ((unsigned)(lower(c) - 'a') < 26u) {
                /* RFC 9112 3.2.2: absolute-form starts with a scheme. */
                p->state = H_SCHEME;
                i++;
                continue;
            }
            err = YMO_E_BAD_TARGET;
            goto fail;

        case H_PATH:
        case H_QUERY: {
            uint8_t k = p->state == H_PATH ? C_PATH : C_TARGET;
            size_t stop = min_sz(min_sz(len, rl_end), head_max);
            while (i < stop && IS(b[i], k))
                i++;
            SCAN_END();
            c = b[i];
            if (c == '?' && p->state == H_PATH) {
                if (i >= rl_end)
                    goto line_limit;
                p->path.len = (uint32_t)(i - p->path.off);
                p->query.off = (uint32_t)(i + 1);
                p->flags |= YMO_HTTP_F_HAS_QUERY;
                p->state = H_QUERY;
                i++;
                continue;
            }
            if (c == ' ') {
                if (p->state == H_PATH)
                    p->path.len = (uint32_t)(i - p->path.off);
                else
                    p->query.len = (uint32_t)(i - p->query.off);
                goto target_end;
            }
            if (IS(c, k))
                goto line_limit;
            /* RFC 9112 3.2: no CTL, SP, DEL, non-ASCII or fragment. */
            err = (c == '\r' || c == '\n') ? YMO_E_BAD_VERSION : YMO_E_BAD_TARGET;
            goto fail;
        }

        case H_STAR:
            if (c != ' ') {
                err = YMO_E_BAD_TARGET;
                goto fail;
            }
            p->path.len = 1;
            goto target_end;

        case H_SCHEME: {
            size_t stop = min_sz(min_sz(len, rl_end), head_max);
            while (i < stop && IS(b[i], C_SCHEME))
                i++;
            SCAN_END();
            c = b[i];
            if (c == ':' && i < rl_end) {
                p->state = H_SLASH1;
                i++;
                continue;
            }
            if (IS(c, C_SCHEME))
                goto line_limit;
            err = YMO_E_BAD_TARGET;
            goto fail;
        }

        case H_SLASH1:
        case H_SLASH2:
            if (i >= rl_end)
                goto line_limit;
            /* Only hierarchical URIs ("scheme://authority") make sense here. */
            if (c != '/') {
                err = YMO_E_BAD_TARGET;
                goto fail;
            }
            p->state = p->state == H_SLASH1 ? H_SLASH2 : H_HOST;
            i++;
            /* Remember where the authority starts, to spot an empty host. */
            p->mark = (uint32_t)i;
            continue;

        case H_HOST: {
            size_t stop = min_sz(min_sz(len, rl_end), head_max);
            while (i < stop && IS(b[i], C_AUTH))
                i++;
            SCAN_END();
            c = b[i];
            if (c == '/' || c == '?' || c == ' ') {
                /* RFC 9110 4.2.1: an http URI with an empty host is invalid;
                 * the rest is held to what Host is (RFC 3986 3.2.2). */
                if (i == p->mark || !valid_host(b + p->mark, (uint32_t)(i - p->mark))) {
                    err = YMO_E_BAD_TARGET;
                    goto fail;
                }
                if (c == '/') {
                    p->path.off = (uint32_t)i;
                    p->state = H_PATH;
                    continue;
                }
                /* RFC 9110 4.2.3: an empty path is "/"; borrow the slash of "//". */
                p->path.off = p->mark - 1;
                p->path.len = 1;
                if (c == ' ')
                    goto target_end;
                if (i >= rl_end)
                    goto line_limit;
                p->query.off = (uint32_t)(i + 1);
                p->flags |= YMO_HTTP_F_HAS_QUERY;
                p->state = H_QUERY;
                i++;
                continue;
            }
            if (IS(c, C_AUTH))
                goto line_limit;
            err = YMO_E_BAD_TARGET;
            goto fail;
        }

        case H_AUTHORITY: {
            size_t stop = min_sz(min_sz(len, rl_end), head_max);
            while (i < stop && IS(b[i], C_AUTH))
                i++;
            SCAN_END();
            c = b[i];
            if (c == ' ') {
                uint32_t n = (uint32_t)(i - p->target.off);
                err = check_authority_form(b + p->target.off, n);
                if (err != YMO_OK)
                    goto fail;
                p->path.off = p->target.off;
                p->path.len = n;
                goto target_end;
            }
            if (IS(c, C_AUTH))
                goto line_limit;
            err = (c == '\r' || c == '\n') ? YMO_E_BAD_VERSION : YMO_E_BAD_TARGET;
            goto fail;
        }

        case H_VERSION:
            /* RFC 9112 2.3: HTTP-version = "HTTP/" DIGIT "." DIGIT, case-sensitive. */
            if (i >= rl_end)
                goto line_limit;
            if (c != (uint8_t)"HTTP/"[i - p->mark]) {
                err = YMO_E_BAD_VERSION;
                goto fail;
            }
            i++;
            if (i - p->mark == 5)
                p->state = H_MAJOR;
            continue;

        case H_MAJOR:
        case H_MINOR:
            if (i >= rl_end)
                goto line_limit;
            if ((unsigned)(c - '0') > 9u) {
                err = YMO_E_BAD_VERSION;
                goto fail;
            }
            if (p->state == H_MAJOR) {
                p->version_major = (uint8_t)(c - '0');
                p->state = H_DOT;
            } else {
                p->version_minor = (uint8_t)(c - '0');
                p->state = H_RL_CR;
            }
            i++;
            continue;

        case H_DOT:
            if (i >= rl_end)
                goto line_limit;
            if (c != '.') {
                err = YMO_E_BAD_VERSION;
                goto fail;
            }
            p->state = H_MINOR;
            i++;
            continue;

        case H_RL_CR:
            if (c != '\r') {
                err = c == '\n' ? YMO_E_BARE_LF : YMO_E_BAD_VERSION;
                goto fail;
            }
            /* RFC 9110 6.2: only major version 1 is ours (505 otherwise). */
            if (p->version_major != 1) {
                err = YMO_E_VERSION_UNSUPPORTED;
                goto fail;
            }
            /* RFC 9110 2.5: a higher minor version is answered as 1.1. */
            if (p->version_minor > 1)
                p->version_minor = 1;
            p->state = H_RL_LF;
            i++;
            continue;

        case H_RL_LF:
        case H_FIELD_LF:
            if (c != '\n') {
                err = YMO_E_BARE_CR;
                goto fail;
            }
            if (p->state == H_FIELD_LF) {
                err = on_field(p, b, &p->headers[p->nheaders]);
                if (err != YMO_OK)
                    goto fail;
                p->nheaders++;
            }
            i++;
            p->line_start = (uint32_t)i;
            p->state = H_FIELD_START;
            continue;

        case H_FIELD_START:
            if (c == '\r') {
                p->state = H_HEAD_LF;
                i++;
                continue;
            }
            if (!IS(c, C_TCHAR)) {
                /* RFC 9112 5.2: obs-fold is refused (also right after the request line, 2.2). */
                if (c == ' ' || c == '\t')
                    err = YMO_E_OBS_FOLD;
                else if (c == '\n')
                    err = YMO_E_BARE_LF;
                else
                    err = YMO_E_BAD_HEADER_NAME;
                goto fail;
            }
            if (p->nheaders >= lim->max_headers) {
                err = YMO_E_TOO_MANY_HEADERS;
                goto fail;
            }
            if (i >= fl_end)
                goto field_limit;
            p->headers[p->nheaders].name.off = (uint32_t)i;
            p->state = H_NAME;
            continue;

        case H_NAME: {
            /* RFC 9112 5.1: field-name is a token, lowercased as it goes. */
            size_t stop = min_sz(min_sz(len, fl_end), head_max);
            while (i < stop && IS(b[i], C_TCHAR)) {
                b[i] = lower(b[i]);
                i++;
            }
            SCAN_END();
            c = b[i];
            ymo_http_header_t *h = &p->headers[p->nheaders];
            if (c == ':') {
                if (i >= fl_end)
                    goto field_limit;
                h->name.len = (uint32_t)(i - h->name.off);
                h->id = header_id(b + h->name.off, h->name.len);
                p->state = H_OWS;
                i++;
                continue;
            }
            if (IS(c, C_TCHAR))
                goto field_limit;
            /* RFC 9112 5.1: no whitespace between name and colon. */
            err = (c == ' ' || c == '\t') ? YMO_E_SPACE_BEFORE_COLON : YMO_E_BAD_HEADER_NAME;
            goto fail;
        }

        case H_OWS: {
            size_t stop = min_sz(min_sz(len, fl_end), head_max);
            while (i < stop && (b[i] == ' ' || b[i] == '\t'))
                i++;
            SCAN_END();
            c = b[i];
            ymo_http_header_t *h = &p->headers[p->nheaders];
            if (c == '\r') {
                h->value.off = (uint32_t)i;
                h->value.len = 0;
                p->state = H_FIELD_LF;
                i++;
                continue;
            }
            if (i >= fl_end && IS(c, C_VALUE))
                goto field_limit;
            if (!IS(c, C_VALUE)) {
                err = c == '\n' ? YMO_E_BARE_LF : YMO_E_BAD_HEADER_VALUE;
                goto fail;
            }
            h->value.off = (uint32_t)i;
            p->state = H_VALUE;
            continue;
        }

        case H_VALUE: {
            /* RFC 9110 5.5: VCHAR, SP, HTAB and obs-text; never NUL, CR, LF. */
            size_t stop = min_sz(min_sz(len, fl_end), head_max);
            while (i < stop && IS(b[i], C_VALUE))
                i++;
            SCAN_END();
            c = b[i];
            if (c == '\r') {
                ymo_http_header_t *h = &p->headers[p->nheaders];
                size_t end = i;
                /* The value started on a non-blank, so this stops in time. */
                while (b[end - 1] == ' ' || b[end - 1] == '\t')
                    end--;
                h->value.len = (uint32_t)(end - h->value.off);
                p->state = H_FIELD_LF;
                i++;
                continue;
            }
            if (IS(c, C_VALUE))
                goto field_limit;
            err = c == '\n' ? YMO_E_BARE_LF : YMO_E_BAD_HEADER_VALUE;
            goto fail;
        }

        case H_HEAD_LF:
            if (c != '\n') {
                err = YMO_E_BARE_CR;
                goto fail;
            }
            i++;
            err = finish_head(p);
            if (err != YMO_OK)
                goto fail;
            p->head_len = (uint32_t)i;
            p->pos = (uint32_t)i;
            p->state = H_DONE;
            return YMO_OK;

        default:
            err = YMO_E_STATE;
            goto fail;
        }

    target_end:
        /* i is at the SP after the target (RFC 9112 3: exactly one SP). */
        if (i >= rl_end)
            goto line_limit;
        p->target.len = (uint32_t)(i - p->target.off);
        i++;
        p->mark = (uint32_t)i;
        p->state = H_VERSION;
        continue;

    line_limit:
        /* A content byte at or past a limit: say which limit it broke. */
        err = i >= head_max ? YMO_E_HEADERS_TOO_LARGE : YMO_E_REQUEST_LINE_TOO_LONG;
        goto fail;

    field_limit:
        err = i >= head_max ? YMO_E_HEADERS_TOO_LARGE : YMO_E_HEADER_FIELD_TOO_LARGE;
        goto fail;
    }

again:
    p->pos = (uint32_t)i;
    return YMO_AGAIN;

fail:
    p->pos = (uint32_t)i;
    p->error = err;
    return err;
}

/*
 * Body decoding. Each call sees only bytes no earlier call consumed. After
 * yielding one run of data it keeps going through framing (CRLF, the next
 * size line, trailers) and stops in front of a second run, so that the end
 * of the body is reported together with its last data when it can be. So
 * YMO_AGAIN with *consumed < len means "call again with the rest". Data and
 * errors come out the same however the input is split.
 */
int ymo_http_parse_body(ymo_http_parser_t *p, const char *buf, size_t len,
                        size_t *consumed, size_t *data_off, size_t *data_len)
{
    const uint8_t *b = (const uint8_t *)buf;
    const ymo_http_limits_t *lim = p->limits;
    size_t i = 0;
    int have_data = 0, counted = 0;
    int err;

    *consumed = 0;
    *data_off = 0;
    *data_len = 0;
    if (p->error != YMO_OK)
        return p->error;

    switch (p->body_state) {
    case B_NONE:
        /* No head yet: a caller bug, not the peer's fault; not sticky. */
        return YMO_E_STATE;
    case B_DONE:
        return YMO_OK;
    case B_LENGTH: {
        size_t n = min_sz(len, p->body_left);
        *data_off = 0;
        *data_len = n;
        *consumed = n;
        p->body_left -= n;
        p->body_total += n;
        if (p->body_left != 0)
            return YMO_AGAIN;
        p->body_state = B_DONE;
        return YMO_OK;
    }
    default:
        break;
    }

    /* Chunked, RFC 9112 7.1. */
    while (i < len) {
        uint8_t c = b[i];
        uint32_t st = p->body_state;

        counted = 0;
        if (st >= B_SIZE_START && st <= B_EXT_QEND) {
            /* Bound the chunk-size line so a peer cannot stream extensions forever. */
            counted = 1;
            if (++p->body_aux > MAX_CHUNK_LINE) {
                err = st <= B_SIZE ? YMO_E_BAD_CHUNK_SIZE : YMO_E_BAD_CHUNK_EXTENSION;
                goto fail;
            }
        } else if (st >= B_TRAILER_START) {
            /* The trailer section is bounded like the head (431). */
            counted = 1;
            if (++p->body_aux > lim->max_header_bytes) {
                err = YMO_E_HEADERS_TOO_LARGE;
                goto fail;
            }
        }

        switch (st) {
        case B_SIZE_START:
            /* chunk-size = 1*HEXDIG */
            if (!IS(c, C_HEX)) {
                err = YMO_E_BAD_CHUNK_SIZE;
                goto fail;
            }
            p->body_left = hexval(c);
            p->body_state = B_SIZE;
            i++;
            continue;

        case B_SIZE:
            if (IS(c, C_HEX)) {
                /* Refuse a size that would not fit in 64 bits. */
                if (p->body_left >> 60) {
                    err = YMO_E_CHUNK_SIZE_OVERFLOW;
                    goto fail;
                }
                p->body_left = (p->body_left << 4) | hexval(c);
                i++;
                continue;
            }
            /* The declared size is capped before anything trusts it. */
            if (p->body_left > lim->max_body - p->body_total) {
                err = YMO_E_BODY_TOO_LARGE;
                goto fail;
            }
            if (c == ';') {
                p->body_state = B_EXT_NAME_BWS;
            } else if (c == ' ' || c == '\t') {
                p->body_state = B_EXT_BWS;
            } else if (c == '\r') {
                p->body_state = B_SIZE_LF;
            } else {
                err = c == '\n' ? YMO_E_BARE_LF : YMO_E_BAD_CHUNK_SIZE;
                goto fail;
            }
            i++;
            continue;

        /* RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] ) */
        case B_EXT_BWS:
            if (c == ';')
                p->body_state = B_EXT_NAME_BWS;
            else if (c != ' ' && c != '\t')
                goto bad_ext;
            i++;
            continue;

        case B_EXT_NAME_BWS:
            if (IS(c, C_TCHAR))
                p->body_state = B_EXT_NAME;
            else if (c != ' ' && c != '\t')
                goto bad_ext;
            i++;
            continue;

        case B_EXT_NAME:
        case B_EXT_TOKEN:
            if (IS(c, C_TCHAR)) {
                i++;
                continue;
            }
            if (c == '=' && st == B_EXT_NAME)
                p->body_state = B_EXT_VAL_BWS;
            else if (c == ';')
                p->body_state = B_EXT_NAME_BWS;
            else if (c == ' ' || c == '\t')
                p->body_state = st == B_EXT_NAME ? B_EXT_NAME_END : B_EXT_BWS;
            else if (c == '\r')
                p->body_state = B_SIZE_LF;
            else
                goto bad_ext;
            i++;
            continue;

        case B_EXT_NAME_END:
            if (c == '=')
                p->body_state = B_EXT_VAL_BWS;
            else if (c == ';')
                p->body_state = B_EXT_NAME_BWS;
            else if (c != ' ' && c != '\t')
                goto bad_ext;
            i++;
            continue;

        case B_EXT_VAL_BWS:
            if (c == '"')
                p->body_state = B_EXT_QUOTED;
            else if (IS(c, C_TCHAR))
                p->body_state = B_EXT_TOKEN;
            else if (c != ' ' && c != '\t')
                goto bad_ext;
            i++;
            continue;

        case B_EXT_QUOTED:
            /* RFC 9110 5.6.4: quoted-string. */
            if (c == '"')
                p->body_state = B_EXT_QEND;
            else if (c == '\\')
                p->body_state = B_EXT_QPAIR;
            else if (!IS(c, C_QDTEXT))
                goto bad_ext;
            i++;
            continue;

        case B_EXT_QPAIR:
            if (!IS(c, C_VALUE))
                goto bad_ext;
            p->body_state = B_EXT_QUOTED;
            i++;
            continue;

        case B_EXT_QEND:
            if (c == ';')
                p->body_state = B_EXT_NAME_BWS;
            else if (c == ' ' || c == '\t')
                p->body_state = B_EXT_BWS;
            else if (c == '\r')
                p->body_state = B_SIZE_LF;
            else
                goto bad_ext;
            i++;
            continue;

        case B_SIZE_LF:
            if (c != '\n') {
                err = YMO_E_BARE_CR;
                goto fail;
            }
            i++;
            p->body_aux = 0;
            if (p->body_left == 0) {
                /* last-chunk: trailers follow (RFC 9112 7.1.2). */
                p->body_state = B_TRAILER_START;
            } else {
                p->body_total += p->body_left;
                p->body_state = B_DATA;
            }
            continue;

        case B_DATA: {
            if (have_data)
                goto yield;
            size_t n = min_sz(len - i, p->body_left);
            *data_off = i;
            *data_len = n;
            have_data = 1;
            i += n;
            p->body_left -= n;
            if (p->body_left == 0)
                p->body_state = B_DATA_CR;
            continue;
        }

        case B_DATA_CR:
        case B_DATA_LF:
            /* RFC 9112 7.1: chunk-data is followed by exactly CRLF. */
            if (c != (st == B_DATA_CR ? '\r' : '\n')) {
                err = YMO_E_BAD_CHUNK_DATA;
                goto fail;
            }
            p->body_state = st == B_DATA_CR ? B_DATA_LF : B_SIZE_START;
            i++;
            continue;

        /* RFC 9112 7.1.2: trailer fields are checked like fields, then dropped. */
        case B_TRAILER_START:
            if (c == '\r')
                p->body_state = B_END_LF;
            else if (IS(c, C_TCHAR))
                p->body_state = B_TRAILER_NAME;
            else
                goto bad_trailer;
            i++;
            continue;

        case B_TRAILER_NAME:
            if (c == ':')
                p->body_state = B_TRAILER_VALUE;
            else if (!IS(c, C_TCHAR))
                goto bad_trailer;
            i++;
            continue;

        case B_TRAILER_VALUE:
            if (c == '\r')
                p->body_state = B_TRAILER_LF;
            else if (!IS(c, C_VALUE))
                goto bad_trailer;
            i++;
            continue;

        case B_TRAILER_LF:
        case B_END_LF:
            if (c != '\n')
                goto bad_trailer;
            i++;
            if (st == B_TRAILER_LF) {
                p->body_state = B_TRAILER_START;
                continue;
            }
            p->body_state = B_DONE;
            *consumed = i;
            return YMO_OK;

        default:
            err = YMO_E_STATE;
            goto fail;
        }
    }

yield:
    *consumed = i;
    return YMO_AGAIN;

bad_ext:
    err = YMO_E_BAD_CHUNK_EXTENSION;
    goto fail;
bad_trailer:
    err = YMO_E_BAD_TRAILER;
fail:
    if (have_data) {
        /*
         * Hand over the data first and stop in front of the bad byte: the
         * next call fails on it, so the data a caller sees never depends on
         * how the input was split. The byte was not consumed: uncount it.
         */
        if (counted)
            p->body_aux--;
        *consumed = i;
        return YMO_AGAIN;
    }
    *consumed = i;
    p->error = err;
    return err;
}
