/* epoll_pong: the epoll reference server of `bench/run.sh limit`.
 *
 *   gcc -Wall -Wextra -O2 -o epoll_pong bench/ref/epoll_pong.c
 *   epoll_pong PORT [ADDR]
 *
 * One thread, one edge-triggered epoll instance. Accepts with accept4 until
 * EAGAIN; reads with recv until a short read (a stream socket read short
 * is drained, and edge-triggered epoll reports the next arrival), then
 * sends the answers of that read with one send. Speaks just enough of the
 * gateway protocol for `flood hold` (pong.h). A connection whose answer
 * does not fit the socket at once (a client that does not read), or that
 * sends a frame above FRAME_MAX, is closed. SIGINT/SIGTERM: print the
 * counts and exit.
 */
#define _GNU_SOURCE
#include <sys/epoll.h>
#include <unistd.h>

#include "pong.h"

#define EVENTS_MAX 1024
#define READ_BUF 65536
#define OUT_BUF 16384

static struct partial *conns; /* by fd */
static unsigned conns_max;
static unsigned long long accepted, closed, dropped, auth_oks, pongs;

static void drop(int fd, int bad)
{
    partial_free(&conns[fd]);
    close(fd);
    closed++;
    dropped += bad;
}

/* Sends the answers of one read: AuthOk, then the Pongs. 0, or -1 when
 * the socket did not take them all (the caller closes it). */
static int answer(int fd, const struct replies *r)
{
    static uint8_t out[OUT_BUF];
    size_t len = 0;
    unsigned i;

    if (r->auth) {
        memcpy(out, AUTH_OK, sizeof AUTH_OK);
        len = sizeof AUTH_OK;
        auth_oks++;
    }
    for (i = 0; i < r->pongs; i++) {
        if (len + sizeof PONG > sizeof out) {
            if (send(fd, out, len, MSG_NOSIGNAL) != (ssize_t)len)
                return -1;
            len = 0;
        }
        memcpy(out + len, PONG, sizeof PONG);
        len += sizeof PONG;
    }
    pongs += r->pongs;
    if (len && send(fd, out, len, MSG_NOSIGNAL) != (ssize_t)len)
        return -1;
    return 0;
}

static void readable(int fd)
{
    static uint8_t buf[READ_BUF];
    struct replies r = {0, 0};
    ssize_t n;

    do {
        n = recv(fd, buf, sizeof buf, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            drop(fd, 0);
            return;
        }
        if (n > 0 && feed(&conns[fd], buf, (size_t)n, &r) != 0) {
            drop(fd, 1);
            return;
        }
    } while (n == (ssize_t)sizeof buf || (n < 0 && errno == EINTR));
    if ((r.auth || r.pongs) && answer(fd, &r) != 0)
        drop(fd, 1);
}

static void accept_all(int ep, int lfd)
{
    for (;;) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET};
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
                return;
            /* EMFILE and the like: the next connection's event retries. */
            fprintf(stderr, "%s: accept4: %s\n", prog, strerror(errno));
            return;
        }
        if ((unsigned)fd >= conns_max) {
            close(fd);
            continue;
        }
        ev.data.fd = fd;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            fprintf(stderr, "%s: epoll_ctl: %s\n", prog, strerror(errno));
            close(fd);
            continue;
        }
        accepted++;
    }
}

int main(int argc, char **argv)
{
    static struct epoll_event evs[EVENTS_MAX];
    struct epoll_event lev = {.events = EPOLLIN | EPOLLET};
    int lfd, ep, i, n;

    conns_max = start(argc, argv, "epoll_pong");
    conns = calloc(conns_max, sizeof *conns);
    if (!conns)
        die("calloc", ENOMEM);
    lfd = listen_on(argc, argv, SOCK_NONBLOCK);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1", errno);
    lev.data.fd = lfd;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) != 0)
        die("epoll_ctl", errno);
    while (!stop) {
        n = epoll_wait(ep, evs, EVENTS_MAX, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait", errno);
        }
        for (i = 0; i < n; i++) {
            if (evs[i].data.fd == lfd)
                accept_all(ep, lfd);
            else
                readable(evs[i].data.fd);
        }
    }
    fprintf(stderr, "%s: accepted %llu, closed %llu (dropped %llu), auth_ok %llu, pongs %llu\n",
            prog, accepted, closed, dropped, auth_oks, pongs);
    return 0;
}
