//! Every input format loads to the same examples; bad files fail with located one-line errors.

mod common;

use common::*;
use pipeline::qa::examples::{load, load_raw, Example};
use pipeline::settings::DataFormat;

fn load_ok(rel: &str) -> Vec<Example> {
    load(&fixture(rel), DataFormat::Auto, false, 32)
        .unwrap_or_else(|e| panic!("{rel}: {e:#}"))
        .0
}

#[test]
fn all_formats_give_the_same_examples() {
    let jsonl = load_ok("inputs/data.jsonl");
    assert_eq!(jsonl.len(), 12);
    assert!(
        jsonl.iter().any(|e| e.answers.len() == 2),
        "fixture should have a multi-answer example"
    );
    for other in ["inputs/hf_disk", "inputs/data.parquet", "inputs/data.csv"] {
        assert_eq!(load_ok(other), jsonl, "{other} differs from data.jsonl");
    }
    // The SQuAD layout has no multi-answer rows in the fixture; compare what it has.
    let squad = load_ok("inputs/squad.json");
    assert_eq!(squad.len(), jsonl.len());
    for (a, b) in squad.iter().zip(&jsonl) {
        assert_eq!(
            (&a.id, &a.context, &a.question),
            (&b.id, &b.context, &b.question)
        );
        assert_eq!(a.answers[0], b.answers[0]);
    }
}

#[test]
fn test_files_may_have_no_answers_but_training_files_may_not() {
    let ex = load_ok("inputs/test_noanswers.jsonl");
    assert!(!ex.is_empty() && ex.iter().all(|e| e.answers.is_empty()));
    let err = load(
        &fixture("inputs/test_noanswers.jsonl"),
        DataFormat::Auto,
        true,
        32,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("test_noanswers.jsonl: line 1"), "{err}");
    assert!(err.contains("answers"), "{err}");
}

#[test]
fn bad_files_name_file_row_and_field() {
    let cases = [
        ("inputs/bad/dup_ids.json", "duplicate id"),
        ("inputs/bad/empty_question.jsonl", "line 3"),
        (
            "inputs/bad/empty_question.jsonl",
            "field `question` is empty",
        ),
        ("inputs/bad/missing_field.jsonl", "line 2"),
        ("inputs/bad/missing_field.jsonl", "`context`"),
    ];
    for (rel, wanted) in cases {
        let err = format!(
            "{:#}",
            load(&fixture(rel), DataFormat::Auto, true, 32).unwrap_err()
        );
        assert!(err.contains(wanted), "{rel}: {err}");
        assert!(
            err.contains(rel.rsplit('/').next().unwrap()),
            "{rel}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{rel}: {err}");
    }
}

#[test]
fn shifted_answers_are_repaired_and_missing_ones_dropped() {
    let raw = load_raw(&fixture("inputs/bad/shifted.json"), DataFormat::Auto).unwrap();
    let (kept, report) = load(
        &fixture("inputs/bad/shifted.json"),
        DataFormat::Auto,
        true,
        32,
    )
    .unwrap();
    assert_eq!(report.repaired_answers, 1, "{report:?}");
    assert_eq!(report.dropped_examples, 1, "{report:?}");
    assert_eq!(kept.len(), raw.len() - 1);
    for e in &kept {
        let a = &e.answers[0];
        let text: String = e
            .context
            .chars()
            .skip(a.start)
            .take(a.text.chars().count())
            .collect();
        assert_eq!(text, a.text, "{}", e.id);
    }
}

#[test]
fn prepare_on_a_bad_file_fails_without_marking_done() {
    let ws = workspace();
    let d = ws.path();
    let bad = fixture("inputs/bad/missing_field.jsonl");
    let err = fails(
        d,
        &[
            "run",
            "prepare",
            "-q",
            "--set",
            &format!("data.train={}", bad.display()),
        ],
    );
    assert!(err.contains("missing_field.jsonl: line 2"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!d.join("outputs/sample/prepare/manifest.json").exists());
}
