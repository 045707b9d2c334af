/*
 * yimmo/tls.h: TLS with OpenSSL as a connection transport. A ymo_tls_t is
 * a loaded configuration (certificates, verification, versions, ALPN, SNI);
 * listeners marked YMO_LISTEN_TLS wrap every accepted connection in it. The
 * handshake runs inside the transport's read, driven by the loop like any
 * other input, so protocols above never see it.
 */
#ifndef YIMMO_TLS_H
#define YIMMO_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "yimmo/core.h"

typedef struct ymo_tls_s ymo_tls_t;

enum ymo_tls_verify {
    YMO_TLS_VERIFY_NONE = 0,        /* no client certificate asked for */
    YMO_TLS_VERIFY_OPTIONAL = 1,    /* asked for; one that fails is refused */
    YMO_TLS_VERIFY_REQUIRED = 2     /* a client without one is refused */
};

typedef struct {
    const char *certfile;           /* PEM chain, leaf first */
    const char *keyfile;            /* PEM key; NULL: in certfile */
    const char *password;           /* the key's passphrase or NULL */
} ymo_tls_cert_t;

typedef struct {
    ymo_tls_cert_t cert;            /* the default certificate */
    const ymo_tls_cert_t *sni;      /* more, picked by the client's server name */
    size_t nsni;
    const char *cafile;             /* verifies client certificates */
    int verify;                     /* enum ymo_tls_verify */
    int min_version;                /* TLS1_2_VERSION or TLS1_3_VERSION */
    const char *ciphers;            /* OpenSSL cipher list for TLS 1.2; NULL: OpenSSL's */
    const unsigned char *alpn;      /* ALPN protocols in wire format; NULL: none */
    size_t alpn_len;
} ymo_tls_config_t;

/* Load a configuration. 0, or a negative code with a one-line reason naming
 * the file or setting in err (-errno for a file that cannot be read,
 * YMO_E_TLS_CONFIG for anything else). */
int ymo_tls_new(const ymo_tls_config_t *cfg, ymo_tls_t **out, char *err, size_t errlen);
/* References: connections hold one while they live. Thread-safe. */
void ymo_tls_ref(ymo_tls_t *t);
void ymo_tls_unref(ymo_tls_t *t);

/* The server's configuration for TLS listeners: new connections take t
 * from now on, open ones keep theirs. Thread-safe (a reload may come from
 * any thread). The server takes its own reference; NULL drops it. */
void ymo_server_set_tls(ymo_server_t *s, ymo_tls_t *t);

/* Wrap a freshly accepted connection in TLS: 0 or YMO_E_NOMEM. */
int ymo_tls_attach(ymo_conn_t *c, ymo_tls_t *t);

/* 1 when c speaks TLS. */
int ymo_tls_active(const ymo_conn_t *c);

/* What a TLS connection negotiated; everything NULL/0 on plain ones.
 * Strings stay valid while the connection lives. */
typedef struct {
    const char *version;            /* "TLSv1.3" */
    const char *cipher;
    const unsigned char *alpn;      /* not NUL-terminated */
    unsigned alpn_len;
    const char *server_name;        /* SNI, or NULL */
    int peer_verified;              /* a client certificate was presented and verified */
} ymo_tls_info_t;

/* 1 and info filled on a TLS connection whose handshake is done, else 0. */
int ymo_tls_info(ymo_conn_t *c, ymo_tls_info_t *info);
/* The client's certificate (an X509 *, borrowed) or NULL. */
void *ymo_tls_peer_cert(ymo_conn_t *c);

#endif /* YIMMO_TLS_H */
