//! Concurrent scrapes share collections. A scrape is answered by the first collection
//! that starts after it arrived, so what it reads is never older than its request; all
//! the scrapes waiting for that collection get the same result, encoded once per format.
//! Collections start at most once per `min_interval`, so a storm of scrapes costs one
//! collection per interval, however many clients take part, and every scraper is served.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Notify};

use super::encode::{self, Format};
use super::Source;
use crate::model::Family;

/// One collection and its encodings.
pub struct Round {
    pub families: Vec<Family>,
    native_schema: i8,
    encoded: [OnceLock<Bytes>; 3],
}

impl Round {
    /// The round's exposition in `format`, encoded by the first scrape that asks.
    pub fn encoded(&self, format: Format) -> Bytes {
        let slot = match format {
            Format::Text004 => &self.encoded[0],
            Format::OpenMetrics => &self.encoded[1],
            Format::Protobuf => &self.encoded[2],
        };
        slot.get_or_init(|| {
            Bytes::from(encode::encode_bytes(
                &self.families,
                format,
                Some(self.native_schema),
            ))
        })
        .clone()
    }
}

/// Where the rounds stand: the generation of the last one finished and whether one is
/// running (then its generation is `finished + 1`).
#[derive(Default)]
struct State {
    finished: u64,
    running: bool,
}

/// What the last round gave: its generation, and the round (None: the agent is
/// stopping and collects no more).
type Published = (u64, Option<Arc<Round>>);

pub struct Rounds {
    state: Mutex<State>,
    wanted: Notify,
    published: watch::Sender<Published>,
}

impl Rounds {
    /// Starts the task that runs collections from `source` on demand.
    pub fn start<S: Source>(source: S, min_interval: Duration, native_schema: i8) -> Arc<Rounds> {
        let (published, _) = watch::channel((0, None));
        let rounds = Arc::new(Rounds {
            state: Mutex::new(State::default()),
            wanted: Notify::new(),
            published,
        });
        let driver = rounds.clone();
        tokio::spawn(async move {
            let mut last_start: Option<tokio::time::Instant> = None;
            loop {
                driver.wanted.notified().await;
                if let Some(last) = last_start {
                    tokio::time::sleep_until(last + min_interval).await;
                }
                last_start = Some(tokio::time::Instant::now());
                let generation = {
                    let mut state = driver.lock();
                    state.running = true;
                    state.finished + 1
                };
                let round = source.snapshot().await.map(|families| {
                    Arc::new(Round {
                        families,
                        native_schema,
                        encoded: Default::default(),
                    })
                });
                let stopping = round.is_none();
                {
                    let mut state = driver.lock();
                    state.running = false;
                    state.finished = generation;
                }
                driver.published.send_replace((generation, round));
                if stopping {
                    // Every later scrape is told the agent is stopping.
                    return;
                }
            }
        });
        rounds
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first round that starts after this call; None once the agent is stopping.
    pub async fn next(&self) -> Option<Arc<Round>> {
        let mut published = self.published.subscribe();
        let wanted = {
            let state = self.lock();
            // A round running now started before this scrape: the next one serves it.
            if state.running {
                state.finished + 2
            } else {
                state.finished + 1
            }
        };
        self.wanted.notify_one();
        loop {
            {
                let (generation, round) = &*published.borrow_and_update();
                if *generation >= wanted || (*generation > 0 && round.is_none()) {
                    return round.clone();
                }
            }
            if published.changed().await.is_err() {
                return None;
            }
            // A round finished that this scrape cannot take: ask for the next.
            self.wanted.notify_one();
        }
    }
}
