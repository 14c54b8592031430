/* The fleet bench's Wi-Fi-like links: a user-space "wire" that delays every IPv4 packet by
 * DELAY +- JITTER microseconds (uniform), in order, per speaker link and direction.
 *
 * Why: `tc qdisc ... netem` is what the bench would use, but the kernel it ran on has no
 * sch_netem (nor fq/etf to delay by timestamp), so the delay is made here. The wire opens
 * one TUN device in each network namespace it is given (setns(2) into /run/netns/NS, then
 * TUNSETIFF: the device is created in that namespace; the descriptor keeps working after
 * switching back), reads the packets the kernel routes into each, and writes each one into
 * the TUN of the namespace that owns its destination address, once its time has come.
 *
 * Every packet gets ONE delay sample on its speaker's link, both directions: broker ->
 * speaker i waits in queue "down i", speaker i -> broker in queue "up i" (the speaker's
 * link, as netem on both ends of its veth would). A queue releases in arrival order: a
 * packet leaves at max(arrival + sample, the release of the packet before it), like Wi-Fi,
 * whose MAC retransmits and delivers in order (netem with jitter would reorder).
 * A queue holds at most QUEUE_MAX packets (netem's default limit is 1000): beyond, drops.
 *
 * usage: fleet_wire DELAY_US JITTER_US SEED NS:IFNAME:A.B.C.D ...
 *   the first triple is the hub (the broker's namespace); each one after it is a speaker.
 *   Prints "ready" once every device exists; runs until SIGTERM/SIGINT or stdin closes;
 *   then prints "stats forwarded=N dropped=M" on stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINKS 256
#define QUEUE_MAX 5000
#define MTU_MAX 65536

typedef struct packet {
    struct packet *next;
    int64_t due;      /* CLOCK_MONOTONIC ns */
    int out;          /* index of the link to write it to */
    size_t len;
    unsigned char data[];
} packet_t;

typedef struct {
    packet_t *head, *tail;
    int64_t last_due;
    int len;
} queue_t;

typedef struct {
    int fd;
    uint32_t addr;    /* network order */
    queue_t up, down; /* up: from this speaker to the hub; down: from the hub to it */
} link_t;

static link_t links[MAX_LINKS];
static int nlinks;
static int64_t delay_ns, jitter_ns;
static uint64_t rng;
static volatile sig_atomic_t stop;
static unsigned long long forwarded, dropped;

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static uint64_t next_random(void) { /* xorshift64* */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 2685821657736338717ULL;
}

static int64_t sample(void) {
    int64_t d = delay_ns;
    if (jitter_ns > 0)
        d += (int64_t)(next_random() % (uint64_t)(2 * jitter_ns + 1)) - jitter_ns;
    return d < 0 ? 0 : d;
}

static int open_tun(const char *ns, const char *name) {
    char path[300];
    int self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC), target, fd;
    struct ifreq ifr;
    snprintf(path, sizeof path, "/run/netns/%s", ns);
    target = open(path, O_RDONLY | O_CLOEXEC);
    if (self < 0 || target < 0 || setns(target, CLONE_NEWNET) < 0) {
        fprintf(stderr, "fleet_wire: cannot enter namespace %s: %s\n", ns, strerror(errno));
        exit(1);
    }
    fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (fd < 0 || ioctl(fd, TUNSETIFF, &ifr) < 0) {
        fprintf(stderr, "fleet_wire: cannot create %s in %s: %s\n", name, ns, strerror(errno));
        exit(1);
    }
    if (setns(self, CLONE_NEWNET) < 0) {
        fprintf(stderr, "fleet_wire: cannot come back to my namespace: %s\n", strerror(errno));
        exit(1);
    }
    close(self);
    close(target);
    return fd;
}

static void enqueue(queue_t *q, packet_t *p, int64_t arrival) {
    int64_t due = arrival + sample();
    if (q->len >= QUEUE_MAX) {
        free(p);
        dropped++;
        return;
    }
    if (due < q->last_due)
        due = q->last_due; /* in order */
    q->last_due = due;
    p->due = due;
    p->next = NULL;
    if (q->tail)
        q->tail->next = p;
    else
        q->head = p;
    q->tail = p;
    q->len++;
}

static int64_t flush(queue_t *q, int64_t now) {
    while (q->head && q->head->due <= now) {
        packet_t *p = q->head;
        q->head = p->next;
        if (!q->head)
            q->tail = NULL;
        q->len--;
        if (write(links[p->out].fd, p->data, p->len) < 0)
            dropped++;
        else
            forwarded++;
        free(p);
    }
    return q->head ? q->head->due : INT64_MAX;
}

static int route(uint32_t dst) {
    int i;
    for (i = 0; i < nlinks; i++)
        if (links[i].addr == dst)
            return i;
    return -1;
}

static void on_signal(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv) {
    static unsigned char buf[MTU_MAX];
    struct pollfd fds[MAX_LINKS + 1];
    int i;

    if (argc < 6 || argc - 4 > MAX_LINKS) {
        fprintf(stderr, "usage: fleet_wire DELAY_US JITTER_US SEED NS:IFNAME:ADDR (hub first) NS:IFNAME:ADDR...\n");
        return 2;
    }
    delay_ns = atoll(argv[1]) * 1000LL;
    jitter_ns = atoll(argv[2]) * 1000LL;
    rng = (uint64_t)atoll(argv[3]) * 0x9E3779B97F4A7C15ULL + 1;
    for (i = 4; i < argc; i++) {
        char *spec = strdup(argv[i]), *ns = spec, *name = strchr(spec, ':'), *addr;
        struct in_addr a;
        if (!name || !(addr = strchr(name + 1, ':')) || inet_pton(AF_INET, addr + 1, &a) != 1) {
            fprintf(stderr, "fleet_wire: bad link %s (NS:IFNAME:A.B.C.D)\n", argv[i]);
            return 2;
        }
        *name++ = 0;
        *addr++ = 0;
        links[nlinks].fd = open_tun(ns, name);
        links[nlinks].addr = a.s_addr;
        nlinks++;
        free(spec);
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    printf("ready\n");
    fflush(stdout);
    for (i = 0; i < nlinks; i++) {
        fds[i].fd = links[i].fd;
        fds[i].events = POLLIN;
    }
    fds[nlinks].fd = 0; /* stdin: the bench closes it (or dies) -> the wire ends */
    fds[nlinks].events = POLLIN;
    while (!stop) {
        int64_t now = now_ns(), next = INT64_MAX, wait;
        struct timespec ts;
        for (i = 0; i < nlinks; i++) {
            int64_t a = flush(&links[i].up, now), b = flush(&links[i].down, now);
            if (a < next)
                next = a;
            if (b < next)
                next = b;
        }
        wait = next == INT64_MAX ? 200000000LL : next - now_ns();
        if (wait < 0)
            wait = 0;
        ts.tv_sec = wait / 1000000000LL;
        ts.tv_nsec = wait % 1000000000LL;
        if (ppoll(fds, (nfds_t)nlinks + 1, &ts, NULL) < 0) {
            if (errno == EINTR)
                continue;
            perror("fleet_wire: ppoll");
            break;
        }
        if (fds[nlinks].revents)
            break;
        now = now_ns();
        for (i = 0; i < nlinks; i++) {
            ssize_t n;
            if (!(fds[i].revents & POLLIN))
                continue;
            while ((n = read(links[i].fd, buf, sizeof buf)) > 0) {
                uint32_t dst;
                int out;
                packet_t *p;
                if (n < 20 || (buf[0] >> 4) != 4)
                    continue; /* IPv4 only (IPv6 router solicitations and the like are dropped) */
                memcpy(&dst, buf + 16, 4);
                out = route(dst);
                if (out < 0 || out == i || (i != 0 && out != 0)) {
                    dropped++;
                    continue; /* only hub <-> speaker */
                }
                p = malloc(sizeof *p + (size_t)n);
                if (!p) {
                    dropped++;
                    continue;
                }
                memcpy(p->data, buf, (size_t)n);
                p->len = (size_t)n;
                p->out = out;
                enqueue(i == 0 ? &links[out].down : &links[i].up, p, now);
            }
        }
    }
    fprintf(stderr, "stats forwarded=%llu dropped=%llu\n", forwarded, dropped);
    return 0;
}
