//! `cargo xtask loopback-floor`: what this host charges to carry one small
//! message over loopback TCP to each of many sockets, with no chat server,
//! WebSocket framing, JSON or checking in the way. It is the floor under
//! `cargo xtask fanout`'s figures: the same shape (one message to every
//! socket, `--rounds` times at a fixed interval), sent by `--senders`
//! single-threaded processes (as the server's stream workers are) and read
//! by `--receivers` single-threaded epoll loops (mio).
//!
//! Each message carries its intended send time; every receiver records each
//! arrival's latency from that time into an HdrHistogram, and the
//! histograms are merged exactly. CPU is sampled from /proc over the sending
//! phase and divided by the deliveries, apart for senders and receivers (on
//! loopback the kernel's receive path runs mostly in the sender's softirq,
//! so it counts on the senders' side).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::idle_memory::{unix_ns, Deliveries};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Sockets, each receiving every message.
    #[arg(long, default_value_t = 20_000)]
    pub sockets: usize,
    /// Sending processes, one thread each, the sockets dealt over them.
    #[arg(long, default_value_t = 2)]
    pub senders: usize,
    /// Receiving processes, one epoll loop each.
    #[arg(long, default_value_t = 2)]
    pub receivers: usize,
    /// Messages sent to every socket.
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    /// Time between two rounds, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Bytes of one message (about a `message` event frame of the server).
    #[arg(long, default_value_t = 200)]
    pub bytes: usize,
}

/// One process holds at most this many of the sockets (the host's limit is
/// 20,000 open files a process; a few are taken by the process itself).
const MAX_SOCKETS_PER_PROCESS: usize = 19_900;

struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn spawn(args: &[String]) -> anyhow::Result<Peer> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {}", args[0]))?;
        let stdin = child.stdin.take().context("piped stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("piped stdout")?);
        Ok(Peer {
            child,
            stdin,
            stdout,
        })
    }

    /// The next line the process writes, which must start with `want`.
    fn expect(&mut self, want: &str) -> anyhow::Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        match line.strip_prefix(want) {
            Some(rest) => Ok(rest.trim().to_owned()),
            None => bail!("a floor process said {line:?}, expected {want:?}"),
        }
    }

    fn say(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{line}")?;
        Ok(self.stdin.flush()?)
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.sockets == 0 || args.senders == 0 || args.receivers == 0 || args.rounds == 0 {
        bail!("--sockets, --senders, --receivers and --rounds must be at least 1");
    }
    if args.bytes < 8 {
        bail!("--bytes must be at least 8 (the send time)");
    }
    if args.sockets.div_ceil(args.senders.min(args.receivers)) > MAX_SOCKETS_PER_PROCESS {
        bail!(
            "{} sockets over {} sender(s) and {} receiver(s) exceed {MAX_SOCKETS_PER_PROCESS} \
             sockets a process: add processes",
            args.sockets,
            args.senders,
            args.receivers
        );
    }
    // Socket i goes to sender i % senders and is held by receiver
    // i * receivers / sockets.
    let mut senders = Vec::new();
    let mut ports = Vec::new();
    for k in 0..args.senders {
        let accepts = (k..args.sockets).step_by(args.senders).count();
        let mut p = Peer::spawn(&[
            "floor-sender".into(),
            "--sockets".into(),
            accepts.to_string(),
        ])?;
        ports.push(p.expect("port ")?);
        senders.push(p);
    }
    let mut receivers = Vec::new();
    for r in 0..args.receivers {
        let first = r * args.sockets / args.receivers;
        let end = (r + 1) * args.sockets / args.receivers;
        let mut p = Peer::spawn(&[
            "floor-receiver".into(),
            "--ports".into(),
            ports.join(","),
            "--first".into(),
            first.to_string(),
            "--sockets".into(),
            (end - first).to_string(),
            "--bytes".into(),
            args.bytes.to_string(),
        ])?;
        p.expect("connected")?;
        receivers.push(p);
    }
    for s in &mut senders {
        s.expect("accepted")?;
    }
    eprintln!(
        "{} sockets connected: {} sender(s), {} receiver(s)",
        args.sockets, args.senders, args.receivers
    );
    std::thread::sleep(Duration::from_secs(1));

    let pids = |peers: &[Peer]| peers.iter().map(|p| p.child.id()).collect::<Vec<_>>();
    let mut sender_cpu = loadgen::procfs::CpuSampler::new(pids(&senders));
    let mut receiver_cpu = loadgen::procfs::CpuSampler::new(pids(&receivers));
    let started = std::time::Instant::now();
    let t0 = unix_ns() + 300_000_000;
    let last = t0 + (args.rounds as u64 - 1) * args.interval_ms * 1_000_000;
    // Receivers stop when every socket has every message, or 10 s after
    // the last round was due.
    let deadline = last + 10_000_000_000;
    for r in &mut receivers {
        r.say(&format!("go {} {deadline}", args.rounds))?;
    }
    for s in &mut senders {
        s.say(&format!(
            "go {t0} {} {} {}",
            args.rounds, args.interval_ms, args.bytes
        ))?;
    }
    let mut all = Deliveries::default();
    for r in &mut receivers {
        let line = r.expect("report ")?;
        all.absorb(serde_json::from_str(&line).context("a receiver's report")?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sender_pct = sender_cpu.sample();
    let receiver_pct = receiver_cpu.sample();
    for s in &mut senders {
        s.expect("done")?;
    }
    for mut p in senders.into_iter().chain(receivers) {
        drop(p.stdin);
        let _ = p.child.wait();
    }

    let h = &all.latency.0;
    let expected = (args.rounds * args.sockets) as u64;
    let short = all.short_of(args.rounds as u64);
    println!(
        "Command: `cargo xtask loopback-floor --sockets {} --senders {} --receivers {} --rounds {} \
         --interval-ms {} --bytes {}`\n",
        args.sockets, args.senders, args.receivers, args.rounds, args.interval_ms, args.bytes
    );
    println!("Machine: {}\n", crate::util::machine_summary());
    println!(
        "| sockets | senders | receivers | deliveries | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | \
         sender CPU µs/delivery | receiver CPU µs/delivery |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} of {} | {} | {:.1} | {:.1} |",
        args.sockets,
        args.senders,
        args.receivers,
        h.len(),
        expected,
        all.latency_cells(),
        all.cpu_us_each(sender_pct, elapsed),
        all.cpu_us_each(receiver_pct, elapsed),
    );
    all.print_read_and_arrival();
    if h.len() != expected || short > 0 {
        bail!(
            "{} of {expected} deliveries arrived; {short} socket(s) missed messages",
            h.len()
        );
    }
    Ok(())
}

fn stdin_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line)
}

/// Reads the `go` line from standard input: `go` and N numbers, `fields`
/// naming them.
fn read_go<const N: usize>(fields: &str) -> anyhow::Result<[u64; N]> {
    let line = stdin_line()?;
    let numbers = line.strip_prefix("go ").map(|rest| {
        rest.split_whitespace()
            .map(str::parse)
            .collect::<Result<Vec<u64>, _>>()
    });
    match numbers {
        Some(Ok(n)) => n
            .try_into()
            .map_err(|_| anyhow::anyhow!("expected go {fields}, got {line:?}")),
        _ => bail!("expected go {fields}, got {line:?}"),
    }
}

fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    Ok(out.flush()?)
}

/// A sending process: accepts `sockets` connections, then on `go T0 ROUNDS
/// INTERVAL_MS BYTES` writes one message to every socket per round, each
/// round at its intended time (nanoseconds since the epoch, carried in the
/// message's first 8 bytes).
pub fn sender(sockets: usize) -> anyhow::Result<()> {
    loadgen::net::raise_fd_limit();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    say(&format!("port {}", listener.local_addr()?.port()))?;
    let mut conns = Vec::with_capacity(sockets);
    while conns.len() < sockets {
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        conns.push(s);
    }
    drop(listener);
    say("accepted")?;
    let [t0, rounds, interval_ms, bytes] = read_go("T0 ROUNDS INTERVAL_MS BYTES")?;
    let mut message = vec![b'x'; bytes as usize];
    for k in 0..rounds {
        let intended = t0 + k * interval_ms * 1_000_000;
        std::thread::sleep(Duration::from_nanos(intended.saturating_sub(unix_ns())));
        message[..8].copy_from_slice(&intended.to_le_bytes());
        for s in &mut conns {
            s.write_all(&message)?;
        }
    }
    say("done")?;
    // Keep the sockets until told to go, so no receiver sees an early end.
    let _ = stdin_line();
    Ok(())
}

/// A receiving process: connects `sockets` sockets (socket `first + i` to
/// the sender `(first + i) % ports`), says `connected`, then on `go ROUNDS
/// DEADLINE_NS` reads every socket in one epoll loop until each has had
/// ROUNDS messages of `bytes` or the deadline passes, and writes its
/// report: `report` and the deliveries as JSON.
pub fn receiver(ports: &[u16], first: usize, sockets: usize, bytes: usize) -> anyhow::Result<()> {
    use mio::{Events, Interest, Poll, Token};
    loadgen::net::raise_fd_limit();
    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(sockets);
    for i in 0..sockets {
        let port = ports[(first + i) % ports.len()];
        let s = TcpStream::connect(("127.0.0.1", port))
            .with_context(|| format!("connect socket {} to port {port}", first + i))?;
        s.set_nonblocking(true)?;
        loadgen::stamp::enable(&s)?;
        let mut s = mio::net::TcpStream::from_std(s);
        poll.registry()
            .register(&mut s, Token(i), Interest::READABLE)?;
        conns.push(s);
    }
    say("connected")?;
    let [rounds, deadline] = read_go("ROUNDS DEADLINE_NS")?;
    let mut seen = Deliveries {
        per_endpoint: vec![0; sockets],
        ..Deliveries::default()
    };
    let mut cutters = vec![Cutter::default(); sockets];
    let mut complete = 0;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    while complete < sockets && unix_ns() < deadline {
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for ev in &events {
            let i = ev.token().0;
            // Edge-triggered: read until a short read (the buffer was
            // emptied; later data raises a new event).
            loop {
                let (n, stamp) = match loadgen::stamp::recv(&conns[i], &mut buf) {
                    Ok((0, _)) => bail!("socket {} closed early", first + i),
                    Ok(got) => got,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                };
                let now = unix_ns();
                cutters[i].feed(bytes, &buf[..n], |sent| {
                    seen.record(i, sent, now, stamp);
                    if seen.per_endpoint[i] == rounds {
                        complete += 1;
                    }
                });
                if n < buf.len() {
                    break;
                }
            }
        }
    }
    say(&format!("report {}", serde_json::to_string(&seen)?))?;
    let _ = stdin_line();
    Ok(())
}

/// Cuts one socket's byte stream into messages of a fixed size, however
/// the reads split them, and gives each message's send time (its first 8
/// bytes, little-endian).
#[derive(Debug, Default, Clone)]
struct Cutter {
    /// Bytes of the current message read so far.
    have: usize,
    head: [u8; 8],
}

impl Cutter {
    fn feed(&mut self, bytes: usize, mut data: &[u8], mut each: impl FnMut(u64)) {
        while !data.is_empty() {
            let take = (bytes - self.have).min(data.len());
            if self.have < 8 {
                let h = (8 - self.have).min(take);
                self.head[self.have..self.have + h].copy_from_slice(&data[..h]);
            }
            self.have += take;
            data = &data[take..];
            if self.have == bytes {
                self.have = 0;
                each(u64::from_le_bytes(self.head));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_out_of_reads_split_anywhere() {
        let bytes = 20;
        let stamps: Vec<u64> = vec![1, u64::MAX, 0x0102_0304_0506_0708, 42];
        let mut stream = Vec::new();
        for t in &stamps {
            let mut m = vec![b'x'; bytes];
            m[..8].copy_from_slice(&t.to_le_bytes());
            stream.extend_from_slice(&m);
        }
        // Reads of every size from 1 byte to the whole stream, including
        // reads that end inside a message's stamp.
        for chunk in 1..=stream.len() {
            let mut cutter = Cutter::default();
            let mut got = Vec::new();
            for read in stream.chunks(chunk) {
                cutter.feed(bytes, read, |t| got.push(t));
            }
            assert_eq!(got, stamps, "reads of {chunk} bytes");
            assert_eq!(
                cutter.have, 0,
                "nothing left over with reads of {chunk} bytes"
            );
        }
        // A message not yet complete gives nothing.
        let mut cutter = Cutter::default();
        let mut got = Vec::new();
        cutter.feed(bytes, &stream[..bytes - 1], |t| got.push(t));
        assert!(got.is_empty());
    }
}
