# The lab's "internet" endpoint: HTTP on TCP and a UDP echo, both dual-stack. Every answer and
# every log line names the peer address the endpoint saw, which is what the lab is about: pods'
# IPv4 must arrive as the node's IPv4, never as 169.254.172.0/22.
import http.server
import socket
import socketserver
import sys
import threading

LOG = open(sys.argv[1], "a", buffering=1)
HTTP_PORT = int(sys.argv[2])
UDP_PORT = int(sys.argv[3])
lock = threading.Lock()


def seen(proto, addr):
    host, port = addr[0], addr[1]
    if host.startswith("::ffff:"):
        host = host[len("::ffff:"):]
    with lock:
        LOG.write(f"{proto} {host} {port}\n")
    return host, port


class DualStack:
    address_family = socket.AF_INET6
    allow_reuse_address = True

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # Not HTTPServer.server_bind: it resolves our own name, which hangs without DNS.
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = "endpoint", HTTP_PORT


class Http(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        host, port = seen("tcp", self.client_address)
        body = f"seen {host} {port}\n".encode()
        if self.path.startswith("/bytes/"):
            # /bytes/N: a large body, for transfers through the NAT (PMTU, throughput).
            n = min(int(self.path[len("/bytes/"):] or 0), 1 << 30)
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            chunk = b"x" * 65536
            while n > 0:
                self.wfile.write(chunk[:n])
                n -= len(chunk)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        # /upload: counts the body, for transfers *from* the pod (PMTU discovery through NAT).
        host, port = seen("tcp", self.client_address)
        n = int(self.headers.get("Content-Length") or 0)
        got = 0
        while got < n:
            chunk = self.rfile.read(min(65536, n - got))
            if not chunk:
                break
            got += len(chunk)
        body = f"seen {host} {port} bytes {got}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class HttpServer(DualStack, socketserver.ThreadingTCPServer):
    daemon_threads = True


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        host, port = seen("udp", self.client_address)
        sock.sendto(f"seen {host} {port} ".encode() + data, self.client_address)


class EchoServer(DualStack, socketserver.UDPServer):
    pass


http_srv = HttpServer(("::", HTTP_PORT), Http)
udp_srv = EchoServer(("::", UDP_PORT), Echo)
threading.Thread(target=udp_srv.serve_forever, daemon=True).start()
print(f"endpoint: http on {HTTP_PORT}/tcp, echo on {UDP_PORT}/udp", flush=True)
http_srv.serve_forever()
