// Reference relay for the bulk scenario: CONNECT host:port (or an absolute-form request, forwarded as-is to
// its host:port), then a blocking thread per direction moving bytes with splice(2) through a pipe, or with
// read/write through a buffer. Usage: relay PORT splice|copy [PIPE_OR_BUFFER_BYTES]
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int use_splice;
static size_t size = 1 << 20;

struct dir { int from, to; };

static void *pump(void *arg) {
    struct dir *d = arg;
    if (use_splice) {
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0) return NULL;
        fcntl(p[1], F_SETPIPE_SZ, (int)size);
        for (;;) {
            ssize_t n = splice(d->from, NULL, p[1], NULL, size, SPLICE_F_MOVE);
            if (n <= 0) break;
            while (n > 0) {
                ssize_t w = splice(p[0], NULL, d->to, NULL, n, SPLICE_F_MOVE);
                if (w <= 0) goto out;
                n -= w;
            }
        }
    out:
        close(p[0]); close(p[1]);
    } else {
        char *buf = malloc(size);
        for (;;) {
            ssize_t n = read(d->from, buf, size);
            if (n <= 0) break;
            for (ssize_t off = 0; off < n;) {
                ssize_t w = write(d->to, buf + off, n - off);
                if (w <= 0) goto done;
                off += w;
            }
        }
    done:
        free(buf);
    }
    shutdown(d->to, SHUT_WR);
    return NULL;
}

static void *serve(void *arg) {
    int client = (int)(long)arg;
    char head[8192];
    size_t got = 0;
    while (got < sizeof head - 1) {
        ssize_t n = read(client, head + got, sizeof head - 1 - got);
        if (n <= 0) { close(client); return NULL; }
        got += n;
        head[got] = 0;
        if (strstr(head, "\r\n\r\n")) break;
    }
    char method[16], target[512];
    if (sscanf(head, "%15s %511s", method, target) != 2) { close(client); return NULL; }
    char *authority = target;
    if (strncmp(authority, "http://", 7) == 0) authority += 7;
    char host[256]; int port = 80;
    char *colon = strchr(authority, ':');
    if (!colon) { close(client); return NULL; }
    size_t hl = colon - authority; if (hl >= sizeof host) hl = sizeof host - 1;
    memcpy(host, authority, hl); host[hl] = 0; port = atoi(colon + 1);
    int upstream = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    if (connect(upstream, (struct sockaddr *)&a, sizeof a) < 0) { close(client); close(upstream); return NULL; }
    int one = 1;
    setsockopt(upstream, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (strcmp(method, "CONNECT") == 0) {
        const char *ok = "HTTP/1.1 200 Connection established\r\n\r\n";
        write(client, ok, strlen(ok));
        char *rest = strstr(head, "\r\n\r\n") + 4;
        if (rest < head + got) write(upstream, rest, head + got - rest);
    } else {
        write(upstream, head, got);
    }
    struct dir up = {client, upstream}, down = {upstream, client};
    pthread_t t;
    pthread_create(&t, NULL, pump, &up);
    pump(&down);
    pthread_join(t, NULL);
    close(client); close(upstream);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: relay PORT splice|copy [BYTES]\n"); return 2; }
    use_splice = strcmp(argv[2], "splice") == 0;
    if (argc > 3) size = strtoul(argv[3], NULL, 0);
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(listener, (struct sockaddr *)&a, sizeof a) < 0 || listen(listener, 4096) < 0) { perror("listen"); return 1; }
    for (;;) {
        int client = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (client < 0) continue;
        pthread_t t;
        pthread_attr_t attr; pthread_attr_init(&attr); pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 64 * 1024);
        pthread_create(&t, &attr, serve, (void *)(long)client);
    }
}
