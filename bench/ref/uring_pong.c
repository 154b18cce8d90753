/* uring_pong: the io_uring reference server of `bench/run.sh limit`.
 *
 *   gcc -Wall -Wextra -O2 -o uring_pong bench/ref/uring_pong.c
 *   uring_pong PORT [ADDR]
 *
 * One thread, one ring (IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN), raw
 * syscalls and <linux/io_uring.h> (no liburing: nothing to install; needs
 * Linux 6.0+). One multishot accept; one multishot recv per connection
 * into a provided buffer ring (no buffer held by an idle connection);
 * answers are sends of static buffers (AuthOk, up to 64 Pongs) as SQEs.
 * Each loop iteration is one io_uring_enter that submits what the last
 * completions asked for and waits for the next. Speaks just enough of the
 * gateway protocol for `flood hold` (pong.h).
 *
 * Sends post a completion only when they fail (IOSQE_CQE_SKIP_SUCCESS:
 * the buffers are static, nothing waits for them), so a quiet loop wakes
 * once per batch of pings, not twice. They are MSG_DONTWAIT | MSG_WAITALL:
 * an answer the socket cannot take whole at once fails at once (nothing
 * parks in the kernel for a client that does not read) and that
 * connection is shut down, as epoll_pong closes it on a short send.
 * SIGINT/SIGTERM: print the counts and exit.
 */
#define _GNU_SOURCE
#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "pong.h"

#define SQ_ENTRIES 4096
#define CQ_ENTRIES 16384
#define BUFS 4096          /* provided buffers (a power of 2) */
#define BUF_SIZE 1024
#define BGID 0
#define PONGS_PER_SEND 64

enum op { OP_ACCEPT = 1, OP_RECV, OP_SEND, OP_CLOSE };

struct conn {
    struct partial part;
    uint16_t gen;   /* tells completions of a reused fd apart */
    uint8_t state;  /* CLOSED, OPEN, SHUT (shut down by us, recv to end) */
};
enum { CLOSED, OPEN, SHUT };

static struct {
    int fd;
    unsigned *sq_head, *sq_tail, sq_mask, *cq_head, *cq_tail, cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    unsigned sq_local; /* our tail, published before each enter */
} ring;
static struct io_uring_buf_ring *br;
static uint8_t *bufs;
static uint8_t pongs_buf[PONGS_PER_SEND * sizeof PONG];
static struct conn *conns; /* by fd */
static unsigned conns_max;
static int lfd;
static unsigned long long accepted, closed, dropped, auth_oks, pongs, send_errors, enobufs;

/* user_data: gen (16 bits) | op (16) | fd (32). */
static uint64_t ud(enum op op, int fd)
{
    uint16_t gen = (unsigned)fd < conns_max ? conns[fd].gen : 0;
    return (uint64_t)gen << 48 | (uint64_t)op << 32 | (uint32_t)fd;
}

static int enter(unsigned submit, unsigned wait)
{
    return (int)syscall(__NR_io_uring_enter, ring.fd, submit, wait,
                        wait ? IORING_ENTER_GETEVENTS : 0, NULL, 0);
}

/* Publishes the queued SQEs and submits them, waiting for `wait`
 * completions. Returns the enter's result (-errno on failure). */
static int submit_and_wait(unsigned wait)
{
    unsigned n = ring.sq_local - *ring.sq_head;
    int ret;

    __atomic_store_n(ring.sq_tail, ring.sq_local, __ATOMIC_RELEASE);
    ret = enter(n, wait);
    return ret < 0 ? -errno : ret;
}

static struct io_uring_sqe *sqe_get(void)
{
    struct io_uring_sqe *s;

    if (ring.sq_local - __atomic_load_n(ring.sq_head, __ATOMIC_ACQUIRE) >= SQ_ENTRIES) {
        int ret = submit_and_wait(0); /* full: submit without waiting */
        if (ret < 0 && ret != -EINTR && ret != -EBUSY)
            die("io_uring_enter", -ret);
    }
    s = &ring.sqes[ring.sq_local++ & ring.sq_mask];
    memset(s, 0, sizeof *s);
    return s;
}

static void arm_accept(void)
{
    struct io_uring_sqe *s = sqe_get();

    s->opcode = IORING_OP_ACCEPT;
    s->fd = lfd;
    s->ioprio = IORING_ACCEPT_MULTISHOT;
    s->accept_flags = SOCK_CLOEXEC;
    s->user_data = ud(OP_ACCEPT, lfd);
}

static void arm_recv(int fd)
{
    struct io_uring_sqe *s = sqe_get();

    s->opcode = IORING_OP_RECV;
    s->fd = fd;
    s->ioprio = IORING_RECV_MULTISHOT;
    s->flags = IOSQE_BUFFER_SELECT;
    s->buf_group = BGID;
    s->user_data = ud(OP_RECV, fd);
}

static void send_static(int fd, const uint8_t *buf, size_t len)
{
    struct io_uring_sqe *s = sqe_get();

    s->opcode = IORING_OP_SEND;
    s->fd = fd;
    s->addr = (uintptr_t)buf;
    s->len = (uint32_t)len;
    s->msg_flags = MSG_NOSIGNAL | MSG_DONTWAIT | MSG_WAITALL; /* whole, now, or fail */
    s->flags = IOSQE_CQE_SKIP_SUCCESS;
    s->user_data = ud(OP_SEND, fd);
}

/* Ends a connection from our side: the shutdown makes its multishot recv
 * complete with 0, which closes it. */
static void shut(int fd)
{
    struct io_uring_sqe *s;

    if (conns[fd].state != OPEN)
        return;
    conns[fd].state = SHUT;
    s = sqe_get();
    s->opcode = IORING_OP_SHUTDOWN;
    s->fd = fd;
    s->len = SHUT_RDWR;
    s->flags = IOSQE_CQE_SKIP_SUCCESS;
    s->user_data = ud(OP_CLOSE, fd);
    dropped++;
}

static void conn_close(int fd)
{
    struct io_uring_sqe *s;

    partial_free(&conns[fd].part);
    conns[fd].state = CLOSED;
    conns[fd].gen++;
    s = sqe_get();
    s->opcode = IORING_OP_CLOSE;
    s->fd = fd;
    s->flags = IOSQE_CQE_SKIP_SUCCESS;
    s->user_data = ud(OP_CLOSE, fd);
    closed++;
}

static void answer(int fd, const struct replies *r)
{
    unsigned left = r->pongs;

    if (r->auth) {
        send_static(fd, AUTH_OK, sizeof AUTH_OK);
        auth_oks++;
        if (left) /* keep AuthOk before the Pongs */
            ring.sqes[(ring.sq_local - 1) & ring.sq_mask].flags |= IOSQE_IO_LINK;
    }
    pongs += left;
    while (left) {
        unsigned k = left < PONGS_PER_SEND ? left : PONGS_PER_SEND;

        send_static(fd, pongs_buf, k * sizeof PONG);
        left -= k;
        if (left)
            ring.sqes[(ring.sq_local - 1) & ring.sq_mask].flags |= IOSQE_IO_LINK;
    }
}

static void give_back(unsigned bid)
{
    struct io_uring_buf *b = &br->bufs[br->tail & (BUFS - 1)];

    b->addr = (uintptr_t)(bufs + (size_t)bid * BUF_SIZE);
    b->len = BUF_SIZE;
    b->bid = (uint16_t)bid;
    __atomic_store_n(&br->tail, br->tail + 1, __ATOMIC_RELEASE);
}

static void on_recv(int fd, const struct io_uring_cqe *cqe)
{
    struct conn *c = &conns[fd];
    struct replies r = {0, 0};

    if (cqe->flags & IORING_CQE_F_BUFFER) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;

        if (cqe->res > 0 && feed(&c->part, bufs + (size_t)bid * BUF_SIZE, (size_t)cqe->res, &r) != 0)
            shut(fd);
        else if (r.auth || r.pongs) {
            if (c->state == OPEN)
                answer(fd, &r);
        }
        give_back(bid);
    }
    if (cqe->flags & IORING_CQE_F_MORE)
        return;
    if (cqe->res > 0 || cqe->res == -ENOBUFS) {
        enobufs += cqe->res == -ENOBUFS;
        arm_recv(fd); /* the multishot recv ended: buffers ran out, or it chose to */
    } else
        conn_close(fd); /* EOF (also after our shutdown) or an error */
}

static void on_accept(const struct io_uring_cqe *cqe)
{
    int fd = cqe->res;

    if (fd >= 0) {
        if ((unsigned)fd >= conns_max) {
            close(fd);
        } else {
            conns[fd].state = OPEN;
            arm_recv(fd);
            accepted++;
        }
    } else if (fd != -EINTR && fd != -ECONNABORTED && fd != -EAGAIN) {
        fprintf(stderr, "%s: accept: %s\n", prog, strerror(-fd));
    }
    if (!(cqe->flags & IORING_CQE_F_MORE))
        arm_accept();
}

static void setup(void)
{
    struct io_uring_params p;
    struct io_uring_buf_reg reg;
    size_t sq_sz, cq_sz;
    uint8_t *sq, *cq;
    unsigned i;

    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE |
              IORING_SETUP_SUBMIT_ALL;
    p.cq_entries = CQ_ENTRIES;
    ring.fd = (int)syscall(__NR_io_uring_setup, SQ_ENTRIES, &p);
    if (ring.fd < 0)
        die("io_uring_setup (DEFER_TASKRUN needs Linux 6.1)", errno);
    if (!(p.features & IORING_FEAT_SINGLE_MMAP) || !(p.features & IORING_FEAT_NODROP))
        die("io_uring: needs IORING_FEAT_SINGLE_MMAP and FEAT_NODROP", ENOSYS);
    sq_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    cq_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (cq_sz > sq_sz)
        sq_sz = cq_sz;
    sq = mmap(NULL, sq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring.fd,
              IORING_OFF_SQ_RING);
    if (sq == MAP_FAILED)
        die("mmap (ring)", errno);
    cq = sq;
    ring.sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_POPULATE, ring.fd, IORING_OFF_SQES);
    if (ring.sqes == MAP_FAILED)
        die("mmap (sqes)", errno);
    ring.sq_head = (unsigned *)(sq + p.sq_off.head);
    ring.sq_tail = (unsigned *)(sq + p.sq_off.tail);
    ring.sq_mask = *(unsigned *)(sq + p.sq_off.ring_mask);
    for (i = 0; i < p.sq_entries; i++) /* the SQ index array: identity */
        ((unsigned *)(sq + p.sq_off.array))[i] = i;
    ring.sq_local = *ring.sq_tail;
    ring.cq_head = (unsigned *)(cq + p.cq_off.head);
    ring.cq_tail = (unsigned *)(cq + p.cq_off.tail);
    ring.cq_mask = *(unsigned *)(cq + p.cq_off.ring_mask);
    ring.cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);

    br = mmap(NULL, BUFS * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE,
              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    bufs = mmap(NULL, (size_t)BUFS * BUF_SIZE, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (br == MAP_FAILED || bufs == MAP_FAILED)
        die("mmap (buffers)", errno);
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uintptr_t)br;
    reg.ring_entries = BUFS;
    reg.bgid = BGID;
    if (syscall(__NR_io_uring_register, ring.fd, IORING_REGISTER_PBUF_RING, &reg, 1) != 0)
        die("io_uring_register (provided buffer ring needs Linux 5.19)", errno);
    br->tail = 0;
    for (i = 0; i < BUFS; i++)
        give_back(i);
    for (i = 0; i < PONGS_PER_SEND; i++)
        memcpy(pongs_buf + i * sizeof PONG, PONG, sizeof PONG);
}

int main(int argc, char **argv)
{
    conns_max = start(argc, argv, "uring_pong");
    conns = calloc(conns_max, sizeof *conns);
    if (!conns)
        die("calloc", ENOMEM);
    lfd = listen_on(argc, argv, 0);
    setup();
    arm_accept();
    while (!stop) {
        unsigned head, tail, i;
        int ret = submit_and_wait(1);

        if (ret < 0 && ret != -EINTR && ret != -EBUSY && ret != -ETIME)
            die("io_uring_enter", -ret);
        head = *ring.cq_head;
        tail = __atomic_load_n(ring.cq_tail, __ATOMIC_ACQUIRE);
        for (i = head; i != tail; i++) {
            const struct io_uring_cqe *cqe = &ring.cqes[i & ring.cq_mask];
            int fd = (int)(uint32_t)cqe->user_data;
            enum op op = (enum op)((cqe->user_data >> 32) & 0xffff);
            uint16_t gen = (uint16_t)(cqe->user_data >> 48);

            if (op == OP_ACCEPT) {
                on_accept(cqe);
            } else if ((unsigned)fd < conns_max && conns[fd].state != CLOSED &&
                       conns[fd].gen == gen) {
                if (op == OP_RECV) {
                    on_recv(fd, cqe);
                } else if (op == OP_SEND) { /* failed (or cancelled behind one that did) */
                    send_errors++;
                    shut(fd);
                }
            }
        }
        __atomic_store_n(ring.cq_head, tail, __ATOMIC_RELEASE);
    }
    fprintf(stderr,
            "%s: accepted %llu, closed %llu (dropped %llu), auth_ok %llu, pongs %llu, send errors %llu, "
            "recv re-armed after ENOBUFS %llu\n",
            prog, accepted, closed, dropped, auth_oks, pongs, send_errors, enobufs);
    return 0;
}
