/*
 * The WebSocket frame parser (RFC 6455 section 5), resumable over any split
 * of the bytes, and the frame header writer. Every rule a peer can break is
 * checked as the header arrives: the close code to answer with is set in
 * p->error and sticks.
 */
#include <string.h>

#include "yimmo/ws.h"

enum { P_HEADER = 0, P_PAYLOAD, P_ERROR };

/* dst[i] = src[i] ^ key[(pos + i) % 4]; dst may be src. Sixteen bytes at a
 * time (GCC/clang vector types: SSE2 on x86-64, NEON on arm64), four blocks
 * per turn: the payload is unmasked at about the speed of a copy. */
typedef uint8_t v16_t __attribute__((vector_size(16)));

static void unmask(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t key[4], uint32_t pos)
{
    uint8_t k[16];
    for (int j = 0; j < 16; j++)
        k[j] = key[(pos + (uint32_t)j) & 3];
    v16_t kv, a, b, c, d;
    memcpy(&kv, k, 16);
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        memcpy(&a, src + i, 16);
        memcpy(&b, src + i + 16, 16);
        memcpy(&c, src + i + 32, 16);
        memcpy(&d, src + i + 48, 16);
        a ^= kv;
        b ^= kv;
        c ^= kv;
        d ^= kv;
        memcpy(dst + i, &a, 16);
        memcpy(dst + i + 16, &b, 16);
        memcpy(dst + i + 32, &c, 16);
        memcpy(dst + i + 48, &d, 16);
    }
    for (; i + 16 <= n; i += 16) {
        memcpy(&a, src + i, 16);
        a ^= kv;
        memcpy(dst + i, &a, 16);
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ k[i & 15];
}

void ymo_ws_parser_init(ymo_ws_parser_t *p, uint64_t max_message, int require_mask)
{
    memset(p, 0, sizeof(*p));
    p->max_message = max_message;
    p->require_mask = (uint8_t)require_mask;
}

static int fail(ymo_ws_parser_t *p, int code, const char *reason)
{
    p->state = P_ERROR;
    p->error = code;
    p->reason = reason;
    return YMO_WS_EV_ERROR;
}

static int is_control(int opcode)
{
    return opcode & 0x8;
}

/* The header is complete in p->hdr: decode and check it. */
static int header_done(ymo_ws_parser_t *p)
{
    const uint8_t *h = p->hdr;
    ymo_ws_frame_t *f = &p->frame;
    f->fin = h[0] >> 7;
    f->rsv = h[0] & 0x70;
    f->opcode = h[0] & 0x0F;
    f->masked = h[1] >> 7;
    uint64_t len = h[1] & 0x7F;
    size_t at = 2;
    if (len == 126) {
        len = ((uint64_t)h[2] << 8) | h[3];
        at = 4;
        /* RFC 6455 5.2: the minimal number of bytes must be used. */
        if (len < 126)
            return fail(p, YMO_WS_PROTOCOL_ERROR, "non-minimal 16-bit payload length");
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = (len << 8) | h[2 + i];
        at = 10;
        if (len >> 63)
            return fail(p, YMO_WS_PROTOCOL_ERROR, "64-bit payload length with its top bit set");
        if (len < 65536)
            return fail(p, YMO_WS_PROTOCOL_ERROR, "non-minimal 64-bit payload length");
    }
    if (f->masked)
        memcpy(f->mask, h + at, 4);
    f->len = len;

    switch (f->opcode) {
    case YMO_WS_CONT:
    case YMO_WS_TEXT:
    case YMO_WS_BINARY:
    case YMO_WS_CLOSE:
    case YMO_WS_PING:
    case YMO_WS_PONG:
        break;
    default:
        return fail(p, YMO_WS_PROTOCOL_ERROR, "reserved opcode");
    }
    /* RFC 6455 5.1: a server closes on an unmasked client frame. */
    if (p->require_mask && !f->masked)
        return fail(p, YMO_WS_PROTOCOL_ERROR, "unmasked client frame");
    /* RFC 6455 5.2: RSV bits only with an extension that defines them;
     * RFC 7692 6: RSV1 only on the first frame of a data message. */
    if (f->rsv & ~p->rsv_allowed)
        return fail(p, YMO_WS_PROTOCOL_ERROR, "reserved bits set");
    if (f->rsv && (is_control(f->opcode) || f->opcode == YMO_WS_CONT))
        return fail(p, YMO_WS_PROTOCOL_ERROR, "reserved bits set on a control or continuation frame");
    if (is_control(f->opcode)) {
        /* RFC 6455 5.5: at most 125 bytes, never fragmented. */
        if (len > 125)
            return fail(p, YMO_WS_PROTOCOL_ERROR, "control frame longer than 125 bytes");
        if (!f->fin)
            return fail(p, YMO_WS_PROTOCOL_ERROR, "fragmented control frame");
    } else if (f->opcode == YMO_WS_CONT) {
        if (!p->in_message)
            return fail(p, YMO_WS_PROTOCOL_ERROR, "continuation frame without a message");
    } else {
        if (p->in_message)
            return fail(p, YMO_WS_PROTOCOL_ERROR, "new message before the last one ended");
        p->in_message = 1;
        p->msg_opcode = f->opcode;
        p->msg_compressed = (f->rsv & 0x40) != 0;
        p->msg_len = 0;
        p->utf8 = YMO_UTF8_ACCEPT;
    }
    if (!is_control(f->opcode)) {
        if (len > p->max_message || p->msg_len + len > p->max_message)
            return fail(p, YMO_WS_TOO_BIG, "message too big");
    }
    p->left = len;
    p->mask_pos = 0;
    p->state = P_PAYLOAD;
    return YMO_WS_EV_HEADER;
}

static size_t header_size(const uint8_t *h)
{
    size_t n = 2;
    uint8_t l = h[1] & 0x7F;
    if (l == 126)
        n += 2;
    else if (l == 127)
        n += 8;
    if (h[1] & 0x80)
        n += 4;
    return n;
}

int ymo_ws_parse(ymo_ws_parser_t *p, uint8_t *buf, size_t len, size_t *consumed,
                 size_t *data_off, size_t *data_len)
{
    return ymo_ws_parse_to(p, buf, len, consumed, data_off, data_len, NULL);
}

int ymo_ws_parse_to(ymo_ws_parser_t *p, uint8_t *buf, size_t len, size_t *consumed,
                    size_t *data_off, size_t *data_len, uint8_t *out)
{
    *consumed = 0;
    *data_off = 0;
    *data_len = 0;
    if (p->state == P_ERROR)
        return YMO_WS_EV_ERROR;

    if (p->state == P_HEADER) {
        /* Gather the header; its size is known from its second byte. */
        size_t used = 0;
        while (used < len) {
            size_t need = p->hdr_len < 2 ? 2 : header_size(p->hdr);
            if (p->hdr_len >= need)
                break;
            size_t take = need - p->hdr_len;
            if (take > len - used)
                take = len - used;
            memcpy(p->hdr + p->hdr_len, buf + used, take);
            p->hdr_len = (uint8_t)(p->hdr_len + take);
            used += take;
        }
        *consumed = used;
        if (p->hdr_len < 2 || p->hdr_len < header_size(p->hdr))
            return YMO_WS_EV_NONE;
        p->hdr_len = 0;
        return header_done(p);
    }

    /* P_PAYLOAD */
    ymo_ws_frame_t *f = &p->frame;
    if (p->left == 0) {
        p->state = P_HEADER;
        if (!is_control(f->opcode) && f->fin) {
            /* RFC 6455 8.1: a text message is valid UTF-8 as a whole. */
            if (p->msg_opcode == YMO_WS_TEXT && !p->msg_compressed
                && p->utf8 != YMO_UTF8_ACCEPT)
                return fail(p, YMO_WS_INVALID_DATA, "invalid UTF-8 in a text message");
            p->in_message = 0;
        }
        return YMO_WS_EV_FRAME_END;
    }
    if (len == 0)
        return YMO_WS_EV_NONE;
    size_t n = p->left < len ? (size_t)p->left : len;
    /* Unmasked in place, or into out in the same pass. */
    uint8_t *dst = out != NULL ? out : buf;
    if (f->masked) {
        unmask(dst, buf, n, f->mask, p->mask_pos);
        p->mask_pos = (uint32_t)((p->mask_pos + n) & 3);
    } else if (out != NULL) {
        memcpy(out, buf, n);
    }
    p->left -= n;
    if (!is_control(f->opcode)) {
        p->msg_len += n;
        if (p->msg_opcode == YMO_WS_TEXT && !p->msg_compressed) {
            /* Fail fast, on the first invalid byte. */
            p->utf8 = ymo_utf8_validate(p->utf8, dst, n);
            if (p->utf8 == YMO_UTF8_REJECT)
                return fail(p, YMO_WS_INVALID_DATA, "invalid UTF-8 in a text message");
        }
    }
    *consumed = n;
    *data_len = n;
    return YMO_WS_EV_PAYLOAD;
}

size_t ymo_ws_frame_header(uint8_t *out, int fin, int rsv, int opcode, uint64_t len)
{
    out[0] = (uint8_t)((fin ? 0x80 : 0) | (rsv & 0x70) | (opcode & 0x0F));
    if (len < 126) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len < 65536) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

/* RFC 6455 7.4: codes a peer may send (and 1012-1014, registered since). */
static int close_code_ok(int code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014)
           || (code >= 3000 && code <= 4999);
}

int ymo_ws_check_close(const uint8_t *payload, size_t len, int *code)
{
    if (len == 0) {
        *code = YMO_WS_NO_STATUS;
        return 0;
    }
    if (len == 1)
        return YMO_WS_PROTOCOL_ERROR;
    *code = (payload[0] << 8) | payload[1];
    if (!close_code_ok(*code))
        return YMO_WS_PROTOCOL_ERROR;
    if (ymo_utf8_validate(YMO_UTF8_ACCEPT, payload + 2, len - 2) != YMO_UTF8_ACCEPT)
        return YMO_WS_INVALID_DATA;
    return 0;
}
