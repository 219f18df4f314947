//! When read-around windows pay: the adaptive rule of `read_around`, a
//! pure state machine with no I/O, so every transition is tested here
//! without a file or a page cache.

/// The adaptive rule, as a pure state machine over epochs of small reads,
/// judged by the fraction of them that found their pages cached (the hit
/// ratio).
///
/// * **Switching on.** Without windows, each miss of a format-2 file
///   brings in two pages. When a sixteenth of the reads of an epoch find
///   their pages cached, reads are coming back to what earlier reads
///   brought in: on a uniform workload that many hits means about 40 % of
///   128 KiB windows have been touched, which is when a window starts to
///   be read again before the workload moves on. That is a bet that the
///   workload lasts about as long again as it has already, the usual rule
///   for when to stop renting and buy. It is placed only when the file
///   fits in the memory the kernel has available: otherwise what a window
///   brings in is evicted before it is read, and every miss just waits
///   longer.
/// * **Staying on.** Epochs with windows are four times longer, and a
///   window pays while it keeps raising the hit ratio: each such epoch's
///   ratio must exceed the one before it by two standard deviations of
///   their difference (about 2 % for ratios near one half), so that noise
///   alone rarely keeps a useless window. On a disk that fits in memory
///   the ratio rises epoch after epoch until nearly everything is cached;
///   once fewer than a sixteenth of the reads miss, the window stays, as it
///   then costs little. When the ratio stops rising (the cache is as full
///   of this file as it gets, or the workload moved on), it goes off.
/// * **Backing off.** After the window went off for not paying, it may
///   come back only after waiting that many epochs, doubled after each
///   failed try up to [`Governor::MAX_WAIT_EPOCHS`].
#[derive(Debug, Clone, PartialEq)]
pub struct Governor {
    /// `(reads, hits)` of the last epoch, if any.
    last: Option<(u32, u32)>,
    /// Epochs to wait before the window may come back.
    waiting: u32,
    /// How long the next wait after a failed try is.
    next_wait: u32,
}

impl Default for Governor {
    fn default() -> Self {
        Self::new()
    }
}

impl Governor {
    /// Small reads per epoch without windows: about a quarter of a second
    /// of cold random reads on this machine, and enough that a hit ratio
    /// near 1/16 is known to within 0.4 % (one standard deviation).
    pub(super) const EPOCH_READS_OFF: u32 = 4096;
    /// Small reads per epoch with windows: four times more, as a rise of
    /// the hit ratio is what is judged, and on a larger disk each epoch
    /// raises it less.
    pub(super) const EPOCH_READS_ON: u32 = 4 * Self::EPOCH_READS_OFF;
    /// The hit ratio that switches windows on.
    const SWITCH_ON_HITS: f64 = 1.0 / 16.0;
    /// Below this miss ratio windows stay on whatever the trend.
    const SETTLED_MISSES: f64 = 1.0 / 16.0;
    /// How many standard deviations a rise must exceed.
    const RISE_DEVIATIONS: f64 = 2.0;
    /// The longest wait after failed tries, in epochs.
    pub const MAX_WAIT_EPOCHS: u32 = 64;

    /// A file that has not been read yet.
    pub fn new() -> Self {
        Self {
            last: None,
            waiting: 0,
            next_wait: 1,
        }
    }

    /// Small reads in an epoch with windows `on` or not.
    pub fn epoch_reads(on: bool) -> u32 {
        if on {
            Self::EPOCH_READS_ON
        } else {
            Self::EPOCH_READS_OFF
        }
    }

    /// Closes an epoch of `reads` small reads of which `hits` found their
    /// pages cached, read with windows `on` or not; whether the next epoch
    /// has them. `fits_in_memory` is asked only before switching on.
    pub fn close_epoch(
        &mut self,
        on: bool,
        reads: u32,
        hits: u32,
        fits_in_memory: impl FnOnce() -> bool,
    ) -> bool {
        if reads == 0 {
            return on;
        }
        let hits = hits.min(reads);
        let before = self.last.replace((reads, hits));
        if on {
            let settled = ratio(reads - hits, reads) < Self::SETTLED_MISSES;
            let rising = before.is_none_or(|before| Self::rose(before, (reads, hits)));
            if settled || rising {
                self.next_wait = 1;
                return true;
            }
            self.waiting = self.next_wait;
            self.next_wait = (self.next_wait * 2).min(Self::MAX_WAIT_EPOCHS);
            return false;
        }
        if self.waiting > 0 {
            self.waiting -= 1;
            return false;
        }
        ratio(hits, reads) >= Self::SWITCH_ON_HITS && fits_in_memory()
    }

    /// Whether the hit ratio of epoch `after` exceeds that of `before` by
    /// more than [`Self::RISE_DEVIATIONS`] standard deviations of the
    /// difference of two such ratios, both `(reads, hits)`.
    fn rose((reads0, hits0): (u32, u32), (reads1, hits1): (u32, u32)) -> bool {
        let rise = ratio(hits1, reads1) - ratio(hits0, reads0);
        let pooled = ratio(hits0 + hits1, reads0 + reads1);
        let variance =
            pooled * (1.0 - pooled) * (1.0 / f64::from(reads0) + 1.0 / f64::from(reads1));
        rise > 0.0 && rise >= Self::RISE_DEVIATIONS * variance.sqrt()
    }
}

/// `part / whole` (whole > 0).
fn ratio(part: u32, whole: u32) -> f64 {
    f64::from(part) / f64::from(whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Epoch outcomes `(reads, hits)` fed to a governor for a file that
    /// fits in memory; the window decisions after each.
    fn run(governor: &mut Governor, start_on: bool, epochs: &[(u32, u32)]) -> Vec<bool> {
        let mut on = start_on;
        epochs
            .iter()
            .map(|&(reads, hits)| {
                on = governor.close_epoch(on, reads, hits, || true);
                on
            })
            .collect()
    }

    #[test]
    fn switches_on_when_a_sixteenth_of_reads_hit_in_a_file_that_fits_in_memory() {
        let n = Governor::EPOCH_READS_OFF;
        let mut governor = Governor::new();
        assert_eq!(
            run(
                &mut governor,
                false,
                &[(n, 0), (n, n / 32), (n, n / 16 - 1)]
            ),
            [false, false, false]
        );
        assert!(!governor.clone().close_epoch(false, n, n / 16, || false));
        assert!(governor.close_epoch(false, n, n / 16, || true));
        assert!(Governor::new().close_epoch(false, n, n, || true));
        // Memory is asked about only when the hits would switch it on.
        Governor::new().close_epoch(false, n, 0, || panic!("asked"));
        Governor::new().close_epoch(true, n, 0, || panic!("asked"));
    }

    #[test]
    fn stays_on_while_the_hit_ratio_rises_beyond_noise_or_misses_are_rare() {
        let n = Governor::EPOCH_READS_ON;
        let mut governor = Governor::new();
        // Off at 10 % hits; on: 20 %, 30 %, 30.5 % (a rise of 0.5 % is
        // under two standard deviations, about 1 %): off.
        let decisions = run(
            &mut governor,
            false,
            &[
                (4096, 410),
                (n, n / 5),
                (n, 3 * n / 10),
                (n, 3 * n / 10 + n / 200),
            ],
        );
        assert_eq!(decisions, [true, true, true, false]);
        // A rise of 1.5 % keeps it.
        let mut governor = Governor::new();
        let decisions = run(
            &mut governor,
            false,
            &[(4096, 410), (n, n / 2), (n, n / 2 + 3 * n / 200)],
        );
        assert_eq!(decisions, [true, true, true]);
        // A fall never does, nor does a flat zero.
        assert!(!Governor::rose((n, n / 2), (n, n / 4)));
        assert!(!Governor::rose((n, 0), (n, 0)));
        // Rare misses keep it on even when hits stop rising.
        let mut governor = Governor::new();
        let decisions = run(
            &mut governor,
            false,
            &[
                (4096, 410),
                (n, n - n / 20),
                (n, n - n / 20),
                (n, n - n / 18),
            ],
        );
        assert_eq!(decisions, [true, true, true, true]);
    }

    #[test]
    fn after_failed_tries_waits_twice_as_long_each_time_up_to_64_epochs() {
        let n = Governor::EPOCH_READS_OFF;
        let mut governor = Governor::new();
        // A workload that always hits a fifth: windows never raise it.
        let mut on = false;
        let mut on_epochs = Vec::new();
        for epoch in 0..400 {
            on = governor.close_epoch(on, n, n / 5, || true);
            if on {
                on_epochs.push(epoch);
            }
        }
        let gaps: Vec<u32> = on_epochs.windows(2).map(|w| w[1] - w[0]).collect();
        // The try, the epoch that judged it, then the wait.
        assert_eq!(&gaps[..8], [3, 4, 6, 10, 18, 34, 66, 66]);
        assert!(gaps.iter().all(|&g| g <= Governor::MAX_WAIT_EPOCHS + 2));
        // A success resets the wait.
        let mut governor = Governor::new();
        assert_eq!(
            run(
                &mut governor,
                false,
                &[(n, n / 5), (n, n / 5), (n, n / 5), (n, n / 5)]
            ),
            [true, false, false, true]
        );
        assert!(governor.close_epoch(true, n, n / 2, || true));
        assert_eq!(governor.next_wait, 1);
    }

    #[test]
    fn an_empty_epoch_changes_nothing() {
        let mut governor = Governor::new();
        assert!(!governor.close_epoch(false, 0, 0, || true));
        assert!(governor.close_epoch(true, 0, 0, || true));
        assert_eq!(governor, Governor::new());
    }
}
