#!/usr/bin/env python3
"""Small packet tools the netvirt tests run inside network namespaces.

Every loop is bounded by a deadline; nothing here sends outside the namespace it runs in.
"""
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003


def mac_bytes(s):
    return bytes(int(x, 16) for x in s.split(":"))


def count_for(s, secs, wanted):
    """Says "ready", then counts for `secs` what `s` receives that `wanted(frame, addr)`
    accepts, and prints the count."""
    s.settimeout(0.2)
    n = 0
    end = time.time() + secs
    print("ready", flush=True)
    while time.time() < end:
        try:
            f, addr = s.recvfrom(65535)
        except socket.timeout:
            continue
        if wanted(f, addr):
            n += 1
    print(n, flush=True)


def listen_udp(port, secs):
    """Counts UDP datagrams (broadcast included) arriving on `port` for `secs`."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.bind(("0.0.0.0", port))
    count_for(s, secs, lambda f, addr: True)


def send_bcast(addr, port, count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    for _ in range(count):
        s.sendto(b"pangate broadcast", (addr, port))
        time.sleep(0.05)


def capture(iface, secs, proto):
    """Counts frames on `iface` for `secs` that carry IPv4 protocol `proto` (1 = ICMP),
    or, with proto 0, UDP to port 7777 (the spoofing probe)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))

    def wanted(f, addr):
        if addr[2] == socket.PACKET_OUTGOING or len(f) < 34 or f[12:14] != b"\x08\x00":
            return False
        ihl = (f[14] & 0x0F) * 4
        if proto:
            return f[23] == proto
        return f[23] == 17 and struct.unpack("!H", f[14 + ihl + 2:14 + ihl + 4])[0] == 7777

    count_for(s, secs, wanted)


def checksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def udp_frame(src_mac, dst_mac, src_ip, dst_ip, port):
    payload = b"spoofed"
    udp = struct.pack("!HHHH", 5555, port, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + udp


def arp_frame(src_mac, dst_mac, op, sha, spa, tha, tpa):
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sha, socket.inet_aton(spa), tha,
                      socket.inet_aton(tpa))
    return dst_mac + src_mac + b"\x08\x06" + arp + b"\0" * 18


def spoof(iface, own_mac, victim_mac, victim_ip, target_mac, target_ip, own_ip):
    """From `iface`: a UDP frame with the victim's source MAC, a UDP frame with our MAC
    but the victim's IP, and ARP (reply and gratuitous) claiming the victim's IP is ours."""
    own, victim, target = mac_bytes(own_mac), mac_bytes(victim_mac), mac_bytes(target_mac)
    bcast = b"\xff" * 6
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    for _ in range(3):
        s.send(udp_frame(victim, target, victim_ip, target_ip, 7777))
        s.send(udp_frame(own, target, victim_ip, target_ip, 7777))
        s.send(arp_frame(own, target, 2, own, victim_ip, target, target_ip))
        s.send(arp_frame(own, bcast, 1, own, victim_ip, b"\0" * 6, victim_ip))
        time.sleep(0.05)


def big_frame(iface, own_mac, dst_mac, own_ip, dst_ip, size):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    f = udp_frame(mac_bytes(own_mac), mac_bytes(dst_mac), own_ip, dst_ip, 7777)
    pad = size - len(f)
    f = f[:16] + struct.pack("!H", 20 + 8 + 7 + pad) + f[18:] + b"\0" * pad
    s.send(f)


def tagged_frame(iface, own_mac, dst_mac, own_ip, dst_ip, vid):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    f = udp_frame(mac_bytes(own_mac), mac_bytes(dst_mac), own_ip, dst_ip, 7777)
    s.send(f[:12] + struct.pack("!HH", 0x8100, vid) + f[12:])


SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 0x10


def vlan_tag(vid):
    return b"" if vid is None else struct.pack("!HH", 0x8100, vid)


def recv_aux(s):
    """One frame and the VLAN ID the kernel decoded from its 802.1Q tag (or None)."""
    data, anc, _, addr = s.recvmsg(65535, socket.CMSG_SPACE(32))
    vid = None
    for level, kind, body in anc:
        # struct tpacket_auxdata: status, len, snaplen, mac, net, vlan_tci, vlan_tpid
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(body) >= 18:
            status, _, _, _, _, tci = struct.unpack_from("IIIHHH", body)
            if status & TP_STATUS_VLAN_VALID:
                vid = tci & 0x0FFF
    return data, vid, addr


def vlan_peer(iface, own_mac, own_ip, target_ip):
    """From outside an 802.1Q uplink: ARP for `target_ip` tagged with VLAN 100, with VLAN
    200 and untagged, then ping it on VLAN 100. Replies are judged by the VLAN ID the
    kernel's own 802.1Q receive path decoded (PACKET_AUXDATA), not by parsing here.
    Prints one line of JSON."""
    import json
    own = mac_bytes(own_mac)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    s.bind((iface, 0))
    s.settimeout(0.1)

    def await_frame(secs, wanted):
        end = time.time() + secs
        while time.time() < end:
            try:
                f, vid, addr = recv_aux(s)
            except socket.timeout:
                continue
            if addr[2] != socket.PACKET_OUTGOING and wanted(f):
                return f, vid
        return None, None

    def is_arp_reply(f):
        return len(f) >= 42 and f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02" \
            and f[28:32] == socket.inet_aton(target_ip)

    out = {}
    for name, vid in (("vlan100", 100), ("vlan200", 200), ("untagged", None)):
        arp = arp_frame(own, b"\xff" * 6, 1, own, own_ip, b"\0" * 6, target_ip)
        s.send(arp[:12] + vlan_tag(vid) + arp[12:])
        f, got = await_frame(1.5, is_arp_reply)
        out[name] = {"arp_reply": f is not None, "vlan": got,
                     "mac": ":".join("%02x" % b for b in f[22:28]) if f else None}
    if out["vlan100"]["arp_reply"]:
        dst = mac_bytes(out["vlan100"]["mac"])
        icmp = struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + b"pangate 802.1Q"
        icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 2, 0, 64, 1, 0,
                         socket.inet_aton(own_ip), socket.inet_aton(target_ip))
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        s.send(dst + own + vlan_tag(100) + b"\x08\x00" + ip + icmp)

        def is_echo_reply(f):
            return len(f) >= 42 and f[12:14] == b"\x08\x00" and f[23] == 1 and f[34] == 0 \
                and f[26:30] == socket.inet_aton(target_ip)

        f, got = await_frame(2.0, is_echo_reply)
        out["echo"] = {"reply": f is not None, "vlan": got}
    print(json.dumps(out), flush=True)


def serve_tcp(port, secs, handle):
    """A TCP server on every address at `port` that runs `handle(conn, end)` on a thread
    per connection; says "ready" once listening, and stops accepting after `secs`."""
    import threading
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(128)
    s.settimeout(0.2)
    print("ready", flush=True)
    end = time.time() + secs
    while time.time() < end:
        try:
            c, _ = s.accept()
        except socket.timeout:
            continue
        threading.Thread(target=handle, args=(c, end), daemon=True).start()


def serve_name(port, name, secs):
    """Answers each connection with `name` and closes it."""
    def answer(c, end):
        try:
            c.sendall(name.encode() + b"\n")
        finally:
            c.close()
    serve_tcp(port, secs, answer)


def serve_stream(port, name, secs):
    """Sends `name`, then 1 KiB every 10 ms on each connection until the client goes."""
    def stream(c, end):
        try:
            c.sendall(name.encode() + b"\n")
            while time.time() < end:
                c.sendall(b"x" * 1024)
                time.sleep(0.01)
        except OSError:
            pass
        finally:
            c.close()
    serve_tcp(port, secs, stream)


def stream_many(ip, port, count, secs):
    """Opens `count` connections to `ip`:`port`, says "ready" once all have named their
    server, reads them all for `secs`, and prints one line of JSON per connection: the
    server's name, bytes after the name, and whether it broke (closed or failed early)."""
    import json
    import select
    conns = []
    for _ in range(count):
        c = socket.create_connection((ip, port), timeout=2)
        buf = b""
        while b"\n" not in buf:
            chunk = c.recv(256)
            if not chunk:
                break
            buf += chunk
        name, _, rest = buf.partition(b"\n")
        c.setblocking(False)
        conns.append({"sock": c, "name": name.decode(), "bytes": len(rest), "broken": False})
    print("ready", flush=True)
    end = time.time() + secs
    while time.time() < end:
        live = [x for x in conns if not x["broken"]]
        if not live:
            break
        readable, _, _ = select.select([x["sock"] for x in live], [], [], 0.1)
        for x in live:
            if x["sock"] in readable:
                try:
                    data = x["sock"].recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    x["bytes"] += len(data)
                else:
                    x["broken"] = True
    print(json.dumps([{k: x[k] for k in ("name", "bytes", "broken")} for x in conns]), flush=True)


def connect_rate(ip, port, secs):
    """Connects to `ip`:`port`, reads the server's line and closes, again and again for
    `secs`; prints one line of JSON with connections per second and failures."""
    import json
    n = failed = 0
    start = time.time()
    end = start + secs
    # Closing with a reset leaves no TIME_WAIT on either side, so a few seconds of
    # connections do not run out of 4-tuples and measure SYN retries instead.
    linger = struct.pack("ii", 1, 0)
    while time.time() < end:
        try:
            with socket.create_connection((ip, port), timeout=2) as c:
                c.settimeout(2)
                c.recv(256)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            n += 1
        except OSError:
            failed += 1
    print(json.dumps({"per_sec": n / (time.time() - start), "failed": failed}), flush=True)


def connect_many(ip, port, count, secs):
    """Makes `count` TCP connections to `ip`:`port` one after another (within `secs` in
    all), reads each answer, and prints one line of JSON: answers by name, and failures."""
    import json
    out = {"answers": {}, "failed": 0}
    end = time.time() + secs
    for _ in range(count):
        if time.time() >= end:
            out["failed"] += 1
            continue
        try:
            with socket.create_connection((ip, port), timeout=2) as c:
                c.settimeout(2)
                name = c.recv(256).decode().strip()
            out["answers"][name] = out["answers"].get(name, 0) + 1
        except OSError:
            out["failed"] += 1
    print(json.dumps(out), flush=True)


def hold(ip, port, secs):
    """Connects to `ip`:`port`, reads the server's name, says "ready", then sends a byte
    every 100 ms until the connection breaks (prints "broken") or `secs` pass ("held")."""
    c = socket.create_connection((ip, port), timeout=2)
    c.recv(256)
    print("ready", flush=True)
    end = time.time() + secs
    try:
        while time.time() < end:
            c.sendall(b".")
            time.sleep(0.1)
    except OSError:
        print("broken", flush=True)
        return
    print("held", flush=True)


def udp_seq_recv(port, secs):
    """Says "ready", then for `secs` takes numbered datagrams on `port` and prints JSON:
    per sending port, how many arrived and how many came after a higher number."""
    import json
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    s.settimeout(0.2)
    print("ready", flush=True)
    flows = {}
    end = time.time() + secs
    while time.time() < end:
        try:
            data, addr = s.recvfrom(2048)
        except socket.timeout:
            continue
        seq = struct.unpack("!I", data[:4])[0]
        got, late, last = flows.get(addr[1], (0, 0, -1))
        flows[addr[1]] = (got + 1, late + (seq < last), max(last, seq))
    print(json.dumps({str(k): {"got": v[0], "late": v[1]} for k, v in flows.items()}), flush=True)


def udp_seq_send(ip, port, flows, count):
    """Sends `count` numbered datagrams on each of `flows` sockets (other source ports),
    interleaved, as fast as it can."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(flows)]
    for i in range(count):
        for s in socks:
            s.sendto(struct.pack("!I", i) + b"x" * 60, (ip, port))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve-name":
        return serve_name(int(args[0]), args[1], float(args[2]))
    if cmd == "serve-stream":
        return serve_stream(int(args[0]), args[1], float(args[2]))
    if cmd == "stream-many":
        return stream_many(args[0], int(args[1]), int(args[2]), float(args[3]))
    if cmd == "connect-rate":
        return connect_rate(args[0], int(args[1]), float(args[2]))
    if cmd == "udp-seq-recv":
        return udp_seq_recv(int(args[0]), float(args[1]))
    if cmd == "udp-seq-send":
        return udp_seq_send(args[0], int(args[1]), int(args[2]), int(args[3]))
    if cmd == "hold":
        return hold(args[0], int(args[1]), float(args[2]))
    if cmd == "connect-many":
        return connect_many(args[0], int(args[1]), int(args[2]), float(args[3]))
    if cmd == "listen-udp":
        listen_udp(int(args[0]), float(args[1]))
    elif cmd == "send-bcast":
        send_bcast(args[0], int(args[1]), int(args[2]))
    elif cmd == "capture":
        capture(args[0], float(args[1]), int(args[2]))
    elif cmd == "spoof":
        spoof(*args)
    elif cmd == "vlan-peer":
        vlan_peer(*args)
    elif cmd == "big-frame":
        big_frame(args[0], args[1], args[2], args[3], args[4], int(args[5]))
    elif cmd == "tagged-frame":
        tagged_frame(args[0], args[1], args[2], args[3], args[4], int(args[5]))
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
