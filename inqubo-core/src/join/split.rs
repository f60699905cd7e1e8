//! Splitting a book between shards: what raising a join's shard count does to each old
//! shard's state (`inqubo topology reshard`).

use super::JoinBook;
use crate::name::RunId;

impl JoinBook {
    /// Moves every run this book knows into the book of the shard `shard_of` names among
    /// `books` (raising a join's shard count: each run goes where its slot now points), with
    /// what it holds: pending outputs, map results, how it ended and its generation. Each
    /// target keeps the later clock. Versions are left to the caller.
    pub fn split_into(self, books: &mut [JoinBook], shard_of: impl Fn(&RunId) -> usize) {
        let Self {
            pending,
            maps,
            finished,
            failed,
            mut ended,
            clock,
            mut generations,
            ..
        } = self;
        let count = books.len();
        if count == 0 {
            return;
        }
        let target = |run: &RunId| shard_of(run).min(count - 1);
        for book in books.iter_mut() {
            book.clock = book.clock.max(clock);
        }
        for (run, outputs) in pending {
            let book = &mut books[target(&run)];
            if let Some(generation) = generations.remove(&run) {
                book.generations.insert(run.clone(), generation);
            }
            book.pending.insert(run, outputs);
        }
        for (run, results) in maps {
            books[target(&run)].maps.insert(run, results);
        }
        for (run, generation) in generations {
            books[target(&run)].generations.insert(run, generation);
        }
        for (list, aborted) in [(finished, false), (failed, true)] {
            for run in list {
                let Some(how) = ended.remove(&run) else {
                    continue;
                };
                let book = &mut books[target(&run)];
                book.ended.insert(run.clone(), how);
                if aborted {
                    book.failed.push_back(run);
                } else {
                    book.finished.push_back(run);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        join::{JoinDecision, JoinTarget, Piece, RunMemory},
        name::StepName,
        protocol::Element,
        workflow::JoinShape,
    };

    fn name(s: &str) -> StepName {
        StepName::new(s).unwrap()
    }
    fn run(s: &str) -> RunId {
        RunId::new(s).unwrap()
    }
    fn output(parent: &str, json: &str) -> Piece {
        Piece::Output {
            parent: name(parent),
            output: json.as_bytes().to_vec(),
            generation: 1,
        }
    }
    fn element(index: u32, size: u32, json: &str, generation: u32) -> Piece {
        Piece::Element {
            parent: name("m"),
            element: Element { index, size },
            output: json.as_bytes().to_vec(),
            generation,
        }
    }
    fn fire(body: &[u8]) -> JoinDecision {
        JoinDecision::Fire {
            body: body.to_vec(),
            generation: 1,
        }
    }
    fn shape() -> JoinShape {
        JoinShape::Tuple(vec![JoinShape::Step(name("b")), JoinShape::Step(name("c"))])
    }

    #[test]
    fn a_book_split_between_shards_keeps_every_run_whole() {
        let shape = shape();
        let target = JoinTarget::Step(&shape);
        let mut book = JoinBook::new();
        book.tick(1_000, RunMemory::default());
        for i in 0..20 {
            book.add(&run(&format!("r{i}")), output("b", "1"), target);
        }
        for i in 0..10 {
            book.add(&run(&format!("r{i}")), output("c", "2"), target);
        }
        book.add(
            &run("m"),
            element(0, 2, "7", 1),
            JoinTarget::Step(&JoinShape::Step(name("m"))),
        );
        let shard_of = |r: &RunId| r.as_str().len() % 3;
        let before = book.clone();
        let mut books = vec![JoinBook::new(), JoinBook::new(), JoinBook::new()];
        book.split_into(&mut books, shard_of);
        let pending: usize = books.iter().map(JoinBook::pending_runs).sum();
        assert_eq!(pending, before.pending_runs());
        for (index, shard) in books.iter_mut().enumerate() {
            for i in 0..20 {
                let r = run(&format!("r{i}"));
                if shard_of(&r) != index {
                    continue;
                }
                // A run that fired is remembered where it went; one that waits fires there.
                let expected = if i < 10 {
                    JoinDecision::Ignore
                } else {
                    fire(b"[1,2]")
                };
                assert_eq!(shard.add(&r, output("c", "2"), target), expected, "run {r}");
            }
            assert_eq!(shard.clock(), 1_000);
        }
        let m = &mut books[shard_of(&run("m"))];
        assert_eq!(
            m.add(
                &run("m"),
                element(1, 2, "8", 1),
                JoinTarget::Step(&JoinShape::Step(name("m")))
            ),
            fire(b"[7,8]")
        );
    }
}
