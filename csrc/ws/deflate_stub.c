/* TEMPORARY until csrc/ws/deflate.c lands: no permessage-deflate. */
#include <stdlib.h>
#include "yimmo/ws.h"
int ymo_ws_deflate_negotiate(const char *o, size_t l, ymo_ws_deflate_params_t *p, char *out, size_t n) { return 0; }
ymo_ws_deflate_t *ymo_ws_deflate_new(const ymo_ws_deflate_params_t *p) { return NULL; }
void ymo_ws_deflate_free(ymo_ws_deflate_t *d) { }
int ymo_ws_inflate(ymo_ws_deflate_t *d, const uint8_t *i, size_t n, uint64_t m, uint8_t **o, size_t *ol) { return YMO_WS_INVALID_DATA; }
int ymo_ws_deflate(ymo_ws_deflate_t *d, const uint8_t *i, size_t n, uint8_t **o, size_t *ol) { return YMO_E_NOMEM; }
