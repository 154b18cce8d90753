/* The little of the gateway's client protocol (PROTOCOL.md,
 * proto/proto/gateway.proto) that the reference servers speak: frames are a
 * 4-byte big-endian length, then one protobuf `Frame`. An Auth frame is
 * answered with a canned AuthOk, a Ping with a canned Pong; every other
 * frame is ignored. No token is verified.
 *
 * Shared by epoll_pong.c and uring_pong.c (bench/run_limit.sh builds them).
 */
#ifndef PONG_PROTO_H
#define PONG_PROTO_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>

/* Largest frame body accepted, bytes (an Auth with its JWT is ~250). */
#define FRAME_MAX 4096

/* Frame{auth_ok: AuthOk{protocol_version 1, conn_id 1, user_id "ref",
 * device_id "d", heartbeat_interval_ms 30000, idle_timeout_ms 90000,
 * frame_bytes_max 4096, node_id "ref"}}: the shape and about the size of
 * the gateway's. */
static const uint8_t AUTH_OK[] = {
    0, 0, 0, 30, 0x12, 28,          /* length 30; field 2 (auth_ok), 28 bytes */
    0x08, 1, 0x10, 1,               /* protocol_version, conn_id */
    0x1a, 3, 'r', 'e', 'f',         /* user_id */
    0x22, 1, 'd',                   /* device_id */
    0x28, 0xb0, 0xea, 0x01,         /* heartbeat_interval_ms 30000 */
    0x30, 0x90, 0xbf, 0x05,         /* idle_timeout_ms 90000 */
    0x38, 0x80, 0x20,               /* frame_bytes_max 4096 */
    0x42, 3, 'r', 'e', 'f',         /* node_id */
};
/* Frame{pong: Pong{heartbeat_interval_ms 30000}}, as the gateway sends it. */
static const uint8_t PONG[] = {0, 0, 0, 6, 0x2a, 4, 0x08, 0xb0, 0xea, 0x01};

/* Tags of the frames answered: field 1 (auth) and 4 (ping), both bytes. */
#define TAG_AUTH 0x0a
#define TAG_PING 0x22

/* One connection's partial frame: NULL unless a read ended inside a frame
 * (loopback reads almost always end on frame boundaries). */
struct partial {
    uint8_t *buf; /* 4 + FRAME_MAX bytes when set */
    uint32_t have;
};

/* What to answer: AuthOk first if auth > 0, then `pongs` Pongs. */
struct replies {
    unsigned auth, pongs;
};

static inline uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void on_frame(const uint8_t *body, uint32_t len, struct replies *r)
{
    if (len == 0)
        return;
    if (body[0] == TAG_AUTH)
        r->auth++;
    else if (body[0] == TAG_PING)
        r->pongs++;
}

static inline void partial_free(struct partial *c)
{
    free(c->buf);
    c->buf = NULL;
    c->have = 0;
}

/* Takes the whole frames of (what c held) ++ p[0..n), adds their answers
 * to r and keeps an incomplete tail in c. Returns -1 on a frame above
 * FRAME_MAX or when out of memory (close the connection), else 0. */
static inline int feed(struct partial *c, const uint8_t *p, size_t n, struct replies *r)
{
    if (c->have) {
        size_t take;
        while (n && c->have < 4) {
            c->buf[c->have++] = *p++;
            n--;
        }
        if (c->have < 4)
            return 0;
        uint32_t len = be32(c->buf);
        if (len > FRAME_MAX)
            return -1;
        take = 4 + len - c->have;
        if (take > n)
            take = n;
        memcpy(c->buf + c->have, p, take);
        c->have += take;
        p += take;
        n -= take;
        if (c->have < 4 + len)
            return 0;
        on_frame(c->buf + 4, len, r);
        partial_free(c);
    }
    while (n >= 4) {
        uint32_t len = be32(p);
        if (len > FRAME_MAX)
            return -1;
        if (n - 4 < len)
            break;
        on_frame(p + 4, len, r);
        p += 4 + len;
        n -= 4 + len;
    }
    if (n) {
        c->buf = malloc(4 + FRAME_MAX);
        if (!c->buf)
            return -1;
        memcpy(c->buf, p, n);
        c->have = n;
    }
    return 0;
}

static const char *prog = "pong";
static volatile sig_atomic_t stop;

static void on_signal(int s)
{
    (void)s;
    stop = 1;
}

/* Prints "prog: what: strerror(err)" and exits 1. */
static void die(const char *what, int err)
{
    fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(err));
    exit(1);
}

/* Checks the arguments (PORT [ADDR]), installs SIGINT/SIGTERM (no
 * SA_RESTART: the wait returns EINTR) and returns RLIMIT_NOFILE, the
 * size of the connection tables (indexed by fd). */
static unsigned start(int argc, char **argv, const char *name)
{
    struct rlimit rl;
    struct sigaction sa;

    prog = name;
    if (argc < 2 || argc > 3 || atoi(argv[1]) <= 0 || atoi(argv[1]) > 65535) {
        fprintf(stderr, "usage: %s PORT [ADDR (127.0.0.1)]\n", name);
        exit(2);
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        die("getrlimit", errno);
    if (rl.rlim_cur > (1u << 20))
        rl.rlim_cur = 1u << 20;
    return (unsigned)rl.rlim_cur;
}

/* A TCP listener on ADDR:PORT with SO_REUSEADDR, SO_REUSEPORT and
 * TCP_NODELAY (Linux copies it to every accepted socket) and a backlog of
 * 65535 (the kernel caps it at net.core.somaxconn). */
static int listen_on(int argc, char **argv, int type_flags)
{
    struct sockaddr_in sa;
    int one = 1, fd;

    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)atoi(argv[1]));
    if (inet_pton(AF_INET, argc > 2 ? argv[2] : "127.0.0.1", &sa.sin_addr) != 1) {
        fprintf(stderr, "%s: not an IPv4 address: %s\n", prog, argv[2]);
        exit(2);
    }
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | type_flags, 0);
    if (fd < 0)
        die("socket", errno);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one))
        die("setsockopt", errno);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        die("bind", errno);
    if (listen(fd, 65535) != 0)
        die("listen", errno);
    fprintf(stderr, "%s: listening on %s:%s\n", prog, argc > 2 ? argv[2] : "127.0.0.1", argv[1]);
    return fd;
}

#endif
