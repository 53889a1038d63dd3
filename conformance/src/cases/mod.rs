//! The catalogue: every test, tied to the one clause of docs/protocol.md it
//! judges. One module per group of spec sections; each exports `cases()`.

mod access;
mod admin;
mod base;
mod compliance;
mod history;
mod me;
mod pools;
mod posting;
mod rooms;
mod streams;

use crate::ctx::{BoxFuture, Check, Ctx};

/// An optional feature a test depends on; declaring it in the profile makes
/// a skip of the test an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Nothing,
    /// The restart hook.
    Restart,
    /// The compliance-export hook.
    Compliance,
    /// A deployment of several pools (`[pools]`).
    Pools,
}

pub type CaseFn = for<'a> fn(&'a Ctx) -> BoxFuture<'a, Check>;

/// One test of the catalogue.
pub struct Case {
    pub clause: &'static str,
    pub name: &'static str,
    pub needs: Need,
    pub run: CaseFn,
}

/// `case!("PC-1.1a", function)` or `case!("PC-10.3b", function, Restart)`.
macro_rules! case {
    ($clause:literal, $f:ident) => {
        case!($clause, $f, Nothing)
    };
    ($clause:literal, $f:ident, $need:ident) => {
        $crate::cases::Case {
            clause: $clause,
            name: stringify!($f),
            needs: $crate::cases::Need::$need,
            run: |cx| Box::pin($f(cx)),
        }
    };
}
pub(crate) use case;

/// Every test, in spec order within each module.
pub fn catalogue() -> Vec<Case> {
    let mut all = Vec::new();
    all.extend(base::cases());
    all.extend(me::cases());
    all.extend(rooms::cases());
    all.extend(access::cases());
    all.extend(streams::cases());
    all.extend(posting::cases());
    all.extend(admin::cases());
    all.extend(compliance::cases());
    all.extend(history::cases());
    all.extend(pools::cases());
    all
}
