//! `reference-server chat`: a terminal client. It joins one room, shows the
//! recent history, prints what arrives, and posts every line typed. A dropped
//! stream is reopened and resumed from the last sequence number seen, so
//! nothing is missed or shown twice.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use pchat_protocol::client::{Client, StreamItem};
use pchat_protocol::{Event, Message, PostMessage};
use rand::Rng;
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Args)]
pub struct ChatArgs {
    #[arg(long, env = "PCHAT_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A bearer token (see `admin token`); or give --user and --password.
    #[arg(long, env = "PCHAT_TOKEN")]
    token: Option<String>,
    #[arg(long)]
    user: Option<String>,
    #[arg(long, env = "PCHAT_PASSWORD")]
    password: Option<String>,
    /// The room id.
    #[arg(long)]
    room: u64,
    /// This endpoint's id (default: terminal-<random>).
    #[arg(long)]
    endpoint: Option<String>,
}

fn show(m: &Message) {
    let time = m.ts.get(11..19).unwrap_or(&m.ts);
    match &m.title {
        Some(t) => println!(
            "[{}] #{} {} ({:?}) {}: {}",
            time, m.seq, m.sender, m.kind, t, m.text
        ),
        None => println!("[{}] #{} {}: {}", time, m.seq, m.sender, m.text),
    }
}

pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let base = Client::new(args.url.clone());
    let token = match (args.token, args.user, args.password) {
        (Some(t), _, _) => t,
        (None, Some(u), Some(p)) => base.login(&u, &p).await.context("login failed")?.token,
        _ => bail!("give --token, or --user and --password"),
    };
    let c = base.as_token(token);
    let endpoint = args
        .endpoint
        .unwrap_or_else(|| format!("terminal-{:08x}", rand::thread_rng().gen::<u32>()));
    let room = args.room;

    let mut stream = c
        .stream(&endpoint, &[])
        .await
        .context("cannot open the event stream")?;
    let joined = c
        .join(room, &endpoint, None)
        .await
        .context("cannot join the room")?;
    println!(
        "-- {} ({} here now); type a line and press Enter to post, Ctrl-D to leave",
        joined.room.name, joined.participants
    );
    if let Some(d) = &joined.disclaimer {
        println!("-- {d}");
    }
    let mut last_seq = joined.last_seq;
    for m in &joined.messages {
        show(m);
    }

    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::channel::<String>(16);
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if lines_tx.send(line).await.is_err() {
                return;
            }
        }
    });

    loop {
        tokio::select! {
            line = lines_rx.recv() => {
                let Some(line) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                let key = format!("{:016x}", rand::thread_rng().gen::<u64>());
                let post = PostMessage { text: line, kind: None, title: None, client_key: Some(key) };
                if let Err(e) = c.post_message(room, &post).await {
                    eprintln!("-- not posted: {e}");
                }
            }
            item = stream.next() => {
                match item {
                    Ok(StreamItem::Event(Event::Message(m))) if m.room == room => {
                        if m.seq > last_seq {
                            last_seq = m.seq;
                            show(&m);
                        }
                    }
                    Ok(StreamItem::Event(Event::ParticipantJoined { user, .. })) => println!("-- {user} joined"),
                    Ok(StreamItem::Event(Event::ParticipantLeft { user, .. })) => println!("-- {user} left"),
                    Ok(StreamItem::Event(Event::Removed { reason, .. })) => {
                        println!("-- removed from the room ({reason:?})");
                        return Ok(());
                    }
                    Ok(StreamItem::Event(_)) => {}
                    Ok(StreamItem::Closed(code, reason)) => {
                        eprintln!("-- stream closed ({code:?} {reason}); reconnecting");
                        stream = reconnect(&c, &endpoint, room, &mut last_seq).await?;
                    }
                    Err(e) => {
                        eprintln!("-- stream error ({e}); reconnecting");
                        stream = reconnect(&c, &endpoint, room, &mut last_seq).await?;
                    }
                }
            }
        }
    }
    let _ = c
        .call_empty(
            reqwest::Method::POST,
            &format!("/v1/rooms/{room}/leave"),
            Some(&serde_json::json!({"endpoint": endpoint})),
        )
        .await;
    Ok(())
}

/// Opens a new stream and joins again from the last message shown: the join
/// answers what was missed, the stream carries on after it.
async fn reconnect(
    c: &Client,
    endpoint: &str,
    room: u64,
    last_seq: &mut u64,
) -> anyhow::Result<pchat_protocol::client::EventStream> {
    for attempt in 0..30u32 {
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(10)))).await;
        let Ok(s) = c.stream(endpoint, &[]).await else {
            continue;
        };
        let Ok(joined) = c.join(room, endpoint, Some(*last_seq)).await else {
            continue;
        };
        for m in joined.messages.iter().filter(|m| m.seq > *last_seq) {
            show(m);
        }
        *last_seq = (*last_seq).max(joined.last_seq);
        return Ok(s);
    }
    bail!("could not reconnect")
}
