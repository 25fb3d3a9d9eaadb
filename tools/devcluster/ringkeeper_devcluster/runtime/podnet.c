/*
 * podnet: give every connection a pod opens the pod's own loopback address.
 *
 * Pods of the local dev cluster are processes on one host, each with its own
 * 127.x.y.z pod IP. Without help the kernel picks 127.0.0.1 as the source of
 * every loopback connection, so servers could not tell pods apart and network
 * faults could not be aimed at one pod. Preloaded into each container, this
 * binds an unbound IPv4 TCP socket to $RINGKEEPER_POD_IP just before connect().
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static connect_fn real_connect;
    if (!real_connect) real_connect = (connect_fn)dlsym(RTLD_NEXT, "connect");
    const char *pod_ip = getenv("RINGKEEPER_POD_IP");
    if (pod_ip && addr && addr->sa_family == AF_INET) {
        int type = 0;
        socklen_t tlen = sizeof(type);
        struct sockaddr_in bound;
        socklen_t blen = sizeof(bound);
        memset(&bound, 0, sizeof(bound));
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) == 0 && type == SOCK_STREAM &&
            getsockname(fd, (struct sockaddr *)&bound, &blen) == 0 && bound.sin_port == 0 &&
            bound.sin_addr.s_addr == htonl(INADDR_ANY)) {
            struct sockaddr_in src;
            memset(&src, 0, sizeof(src));
            src.sin_family = AF_INET;
            if (inet_pton(AF_INET, pod_ip, &src.sin_addr) == 1) {
                int saved = errno;
                (void)bind(fd, (struct sockaddr *)&src, sizeof(src)); /* best effort */
                errno = saved;
            }
        }
    }
    return real_connect(fd, addr, len);
}
