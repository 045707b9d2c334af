/*
 * Incremental UTF-8 validation (RFC 3629 section 4), for WebSocket text
 * (RFC 6455 8.1): fails on the first byte that cannot start or continue a
 * well-formed sequence, so a message is refused as soon as it goes wrong,
 * also across frames.
 */
#include <string.h>

#include "yimmo/ws.h"

/* States: how many continuation bytes are due, and which range the next
 * one must fall in (to rule out overlong forms, surrogates and code points
 * past U+10FFFF). */
enum {
    U_ACCEPT = YMO_UTF8_ACCEPT,
    U_CONT1 = 1,    /* one more, 80..BF */
    U_CONT2 = 2,    /* two more */
    U_CONT3 = 3,    /* three more */
    U_E0 = 4,       /* after E0: A0..BF, then one */
    U_ED = 5,       /* after ED: 80..9F (no surrogates), then one */
    U_F0 = 6,       /* after F0: 90..BF, then two */
    U_F4 = 7,       /* after F4: 80..8F, then two */
    U_REJECT = YMO_UTF8_REJECT
};

static uint32_t lead(uint8_t b)
{
    if (b < 0x80)
        return U_ACCEPT;
    if (b < 0xC2)
        return U_REJECT;    /* continuation, or C0/C1 (overlong) */
    if (b < 0xE0)
        return U_CONT1;
    if (b == 0xE0)
        return U_E0;
    if (b == 0xED)
        return U_ED;
    if (b < 0xF0)
        return U_CONT2;
    if (b == 0xF0)
        return U_F0;
    if (b < 0xF4)
        return U_CONT3;
    if (b == 0xF4)
        return U_F4;
    return U_REJECT;
}

uint32_t ymo_utf8_validate(uint32_t state, const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (state == U_ACCEPT) {
            /* ASCII runs, eight bytes at a time. */
            while (i + 8 <= n) {
                uint64_t w;
                memcpy(&w, p + i, 8);
                if (w & 0x8080808080808080ull)
                    break;
                i += 8;
            }
            if (i == n)
                break;
            state = lead(p[i++]);
            if (state == U_REJECT)
                return U_REJECT;
            continue;
        }
        uint8_t b = p[i++];
        switch (state) {
        case U_CONT1:
        case U_CONT2:
        case U_CONT3:
            if ((b & 0xC0) != 0x80)
                return U_REJECT;
            state = state - 1;
            break;
        case U_E0:
            if (b < 0xA0 || b > 0xBF)
                return U_REJECT;
            state = U_CONT1;
            break;
        case U_ED:
            if (b < 0x80 || b > 0x9F)
                return U_REJECT;
            state = U_CONT1;
            break;
        case U_F0:
            if (b < 0x90 || b > 0xBF)
                return U_REJECT;
            state = U_CONT2;
            break;
        case U_F4:
            if (b < 0x80 || b > 0x8F)
                return U_REJECT;
            state = U_CONT2;
            break;
        default:
            return U_REJECT;
        }
    }
    return state;
}
