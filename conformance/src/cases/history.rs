//! §15 ordering and durability, judged by the history check: one seeded
//! concurrent workload per run, shared by the three clauses, each of which
//! fails on the anomalies that break it.

use serde_json::json;

use super::{case, Case};
use crate::ctx::{Check, Ctx, Flaw};
use crate::history::{self, workload, AnomalyKind, Checked};

pub fn cases() -> Vec<Case> {
    vec![
        case!("PC-15.1a", one_total_order_per_room),
        case!("PC-15.2a", every_endpoint_gets_everything_once_in_order),
        case!("PC-15.3a", no_acknowledged_message_is_lost),
    ]
}

/// Runs the workload once per run (the first §15 test to ask runs it).
pub async fn run_once(cx: &Ctx) -> Result<&Checked, Flaw> {
    let r = cx.history_run.get_or_init(|| async { run(cx).await }).await;
    r.as_ref().map_err(Clone::clone)
}

async fn run(cx: &Ctx) -> Result<Checked, Flaw> {
    let mut p = cx.history;
    if cx.w.admin.is_none() {
        // Without an administrator only the three shared accounts can act.
        p.clients = p.clients.min(3);
    }
    let users = cx.actors(p.clients).await?;
    let members: Vec<String> = users.iter().map(|u| u.principal()).collect();
    let mut rooms = Vec::new();
    for _ in 0..p.rooms {
        rooms.push(
            cx.room(json!({"privacy": "open", "members": members}))
                .await?,
        );
    }
    let clients = users
        .into_iter()
        .map(|user| workload::Actor {
            endpoint: cx.endpoint(&user),
            user,
        })
        .collect();
    cx.log(format!(
        "history check: seed {}, {} clients, rooms {rooms:?}, {} ops each",
        cx.seed, p.clients, p.ops
    ));
    let h = workload::run(cx.http.clone(), &cx.base, clients, rooms, p, cx.seed).await;
    let anomalies = history::check(&h);
    let saved = match &cx.out_dir {
        Some(dir) => {
            let path = dir.join("history.json");
            h.save(&path)
                .map_err(|e| Flaw::NotPossible(format!("saving the history: {e:#}")))?;
            Some(path)
        }
        None => None,
    };
    let posts = h
        .entries
        .iter()
        .filter(|e| e.f == history::Op::Post && e.phase == history::Phase::Ok)
        .count();
    cx.log(format!(
        "history: {} entries, {posts} acknowledged posts, {} anomalies",
        h.entries.len(),
        anomalies.len()
    ));
    Ok(Checked {
        history: h,
        anomalies,
        saved,
    })
}

async fn judge(cx: &Ctx, kinds: &[AnomalyKind]) -> Check {
    let c = run_once(cx).await?;
    let acked = c
        .history
        .entries
        .iter()
        .filter(|e| e.f == history::Op::Post && e.phase == history::Phase::Ok)
        .count();
    if acked == 0 {
        return Err(Flaw::NotPossible(
            "the workload got no post acknowledged".into(),
        ));
    }
    let found: Vec<String> = c
        .anomalies
        .iter()
        .filter(|a| kinds.contains(&a.kind))
        .map(|a| a.to_string())
        .collect();
    for f in &found {
        cx.log(format!("anomaly: {f}"));
    }
    if found.is_empty() {
        return Ok(());
    }
    let saved = c
        .saved
        .as_ref()
        .map(|p| {
            format!(
                "; history saved to {} (conformance check-history)",
                p.display()
            )
        })
        .unwrap_or_default();
    Err(Flaw::Fail(format!(
        "{} anomalies (seed {}){saved}; first: {}",
        found.len(),
        c.history.seed,
        found[0]
    )))
}

async fn one_total_order_per_room(cx: &Ctx) -> Check {
    judge(cx, &[AnomalyKind::Divergent, AnomalyKind::Gap]).await
}

async fn every_endpoint_gets_everything_once_in_order(cx: &Ctx) -> Check {
    judge(cx, &[AnomalyKind::Duplicate, AnomalyKind::Reorder]).await
}

async fn no_acknowledged_message_is_lost(cx: &Ctx) -> Check {
    judge(cx, &[AnomalyKind::Lost, AnomalyKind::Phantom]).await
}
