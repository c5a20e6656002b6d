//! A bounded TCP ping-pong: request/response round trips over one
//! connection, each timed on its own, for latency percentiles that iperf3
//! cannot give. The bench binary runs the server in the warp container and
//! the client in a target (the binary is bind-mounted; the host's libraries
//! come from the `HOST_TOOLS` mounts).

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{TcpListener, TcpStream, ToSocketAddrs as _},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Largest message either side accepts.
pub const MAX_SIZE: usize = 64 << 10;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Echoes fixed-size messages of `size` bytes on `port` (all addresses)
/// until `lifetime` has passed; one thread per connection.
pub fn serve(port: u16, size: usize, lifetime: Duration) -> anyhow::Result<()> {
    if size == 0 || size > MAX_SIZE {
        bail!("message size must be 1..={MAX_SIZE}");
    }
    let listener =
        TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding {port}"))?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + lifetime;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => {
                thread::spawn(move || echo(stream, size, deadline));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(e).context("accept"),
        }
    }
    Ok(())
}

fn echo(mut stream: TcpStream, size: usize, deadline: Instant) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut buf = vec![0u8; size];
    while Instant::now() < deadline {
        if stream.read_exact(&mut buf).is_err() || stream.write_all(&buf).is_err() {
            return;
        }
    }
}

/// `warmup` untimed round trips, then `count` timed ones of `size` bytes
/// each way to `addr`; the round-trip times in nanoseconds. Bounded by
/// `limit` in total.
pub fn client(
    addr: &str,
    size: usize,
    warmup: usize,
    count: usize,
    limit: Duration,
) -> anyhow::Result<Vec<u64>> {
    if size == 0 || size > MAX_SIZE {
        bail!("message size must be 1..={MAX_SIZE}");
    }
    let target = addr
        .to_socket_addrs()
        .with_context(|| format!("address {addr}"))?
        .next()
        .with_context(|| format!("no address for {addr}"))?;
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(3))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let deadline = Instant::now() + limit;
    let out = vec![0x5au8; size];
    let mut back = vec![0u8; size];
    let mut rtts = Vec::with_capacity(count);
    for i in 0..warmup + count {
        if Instant::now() > deadline {
            bail!(
                "only {} of {count} round trips within {limit:?}",
                rtts.len()
            );
        }
        let started = Instant::now();
        stream.write_all(&out).context("sending")?;
        stream.read_exact(&mut back).context("receiving")?;
        let rtt = started.elapsed();
        if back != out {
            bail!("the echo differs from what was sent");
        }
        if i >= warmup {
            rtts.push(rtt.as_nanos() as u64);
        }
    }
    Ok(rtts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_over_loopback() {
        let port = 40000 + (std::process::id() % 20000) as u16;
        let server = thread::spawn(move || serve(port, 64, Duration::from_secs(3)));
        let mut rtts = None;
        for _ in 0..50 {
            if let Ok(r) = client(
                &format!("127.0.0.1:{port}"),
                64,
                10,
                100,
                Duration::from_secs(3),
            ) {
                rtts = Some(r);
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let rtts = rtts.expect("the client never connected");
        assert_eq!(rtts.len(), 100);
        assert!(rtts.iter().all(|&ns| ns > 0));
        server.join().expect("server thread").expect("server");
    }
}
