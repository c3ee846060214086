//! Chat histories, one per session id, bounded in every direction: sessions, turns per session
//! and characters per turn. The oldest session and the oldest turns go first.

use std::collections::HashMap;
use std::sync::Mutex;

const MAX_SESSIONS: usize = 32;
const MAX_TURNS: usize = 16;
const MAX_TURN_CHARS: usize = 16 * 1024;

#[derive(Default)]
pub struct ChatSessions {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    clock: u64,
    sessions: HashMap<String, Session>,
}

struct Session {
    last_used: u64,
    turns: Vec<(String, String)>,
}

impl ChatSessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Earlier (user, assistant) turns of `id`, oldest first.
    pub fn history(&self, id: &str) -> Vec<(String, String)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .sessions
            .get(id)
            .map(|session| session.turns.clone())
            .unwrap_or_default()
    }

    pub fn record(&self, id: &str, user: String, answer: String) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.clock += 1;
        let now = inner.clock;
        if !inner.sessions.contains_key(id) && inner.sessions.len() >= MAX_SESSIONS {
            let oldest = inner
                .sessions
                .iter()
                .min_by_key(|(_, session)| session.last_used)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                inner.sessions.remove(&oldest);
            }
        }
        let session = inner.sessions.entry(id.to_owned()).or_insert(Session {
            last_used: now,
            turns: Vec::new(),
        });
        session.last_used = now;
        session.turns.push((capped(user), capped(answer)));
        if session.turns.len() > MAX_TURNS {
            let excess = session.turns.len() - MAX_TURNS;
            session.turns.drain(..excess);
        }
    }

    pub fn session_count(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sessions
            .len()
    }
}

fn capped(text: String) -> String {
    if text.chars().count() <= MAX_TURN_CHARS {
        return text;
    }
    text.chars().take(MAX_TURN_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histories_are_per_session_and_bounded() {
        let sessions = ChatSessions::new();
        for turn in 0..40 {
            sessions.record("a", format!("q{turn}"), format!("a{turn}"));
        }
        sessions.record("b", "hello".into(), "hi".into());
        let history = sessions.history("a");
        assert_eq!(history.len(), MAX_TURNS);
        assert_eq!(history[0].0, "q24");
        assert_eq!(sessions.history("b"), [("hello".into(), "hi".into())]);
        assert!(sessions.history("c").is_empty());

        for id in 0..100 {
            sessions.record(
                &format!("s{id}"),
                "x".repeat(MAX_TURN_CHARS + 10),
                "y".into(),
            );
        }
        assert_eq!(sessions.session_count(), MAX_SESSIONS);
        assert!(
            sessions.history("a").is_empty(),
            "the oldest sessions go first"
        );
        assert_eq!(sessions.history("s99")[0].0.len(), MAX_TURN_CHARS);
    }
}
