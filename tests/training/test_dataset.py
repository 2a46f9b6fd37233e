"""Dataset building: label decisions, speaker-disjoint subsets, balanced sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.dataset import (
    AROUSAL_LEVELS,
    DEFAULT_CORPORA,
    assign_subsets,
    build_arousal_dataset,
    build_dataset,
    check_spans,
    clip_sources,
    map_labels,
    read_manifest,
    read_manifests,
    sampling_weights,
    speaker_keys,
    training_targets,
)
from worker.constants import EMOTIONS
from worker.errors import ConfigError


def _clips(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["corpus", "speaker", "emotion", "split"]).assign(
        path=lambda d: [f"/x/{i}.ogg" for i in range(len(d))])


def test_calm_becomes_neutral_and_boredom_and_unlabelled_are_dropped() -> None:
    df = _clips([("ravdess", "a1", "calm", "train"), ("emodb", "03", "boredom", "train"),
                 ("baved", "s1", "", "train"), ("tess", "OAF", "Angry", "train")])
    out = map_labels(df)
    assert out["label"].tolist() == ["neutral", "angry"]
    assert out["label_id"].tolist() == [EMOTIONS.index("neutral"), EMOTIONS.index("angry")]

    # trained as a class of its own: calm gets the first index past the seven, the rest
    # keep their label; sampling still sees it as neutral
    assert training_targets(out, ("calm",)).tolist() == [len(EMOTIONS), EMOTIONS.index("angry")]
    assert training_targets(out).tolist() == out["label_id"].tolist()


def test_validation_speakers_come_from_train_and_test_is_untouched() -> None:
    rows = [("ravdess", f"actor{s:02d}", "happy", "train") for s in range(1, 11) for _ in range(3)]
    rows += [("ravdess", "actor20", "sad", "test"), ("tess", "OAF", "sad", "train"),
             ("tess", "YAF", "sad", "train")]
    df = map_labels(_clips(rows)).assign(gender="?")
    out = assign_subsets(df, val_fraction=0.2, seed=3)
    val = set(out.loc[out["subset"] == "val", "speaker"])
    train = set(out.loc[out["subset"] == "train", "speaker"])
    assert len(val) == 2 and not val & train          # 20 % of 10 speakers, disjoint
    assert out.loc[out["speaker"] == "actor20", "subset"].tolist() == ["test"]
    # TESS has 2 speakers (< 4): kept whole in train
    assert set(out.loc[out["corpus"] == "tess", "subset"]) == {"train"}
    # seeded: the same seed picks the same speakers
    again = assign_subsets(df, val_fraction=0.2, seed=3)
    assert set(again.loc[again["subset"] == "val", "speaker"]) == val


def test_sampling_weights_give_each_class_an_equal_share_split_across_corpora() -> None:
    rows = ([("tess", "OAF", "angry", "train")] * 30 + [("ravdess", "a1", "angry", "train")] * 5
            + [("ravdess", "a1", "sad", "train")] * 10)
    df = map_labels(_clips(rows))
    w = sampling_weights(df)
    assert w.sum() == pytest.approx(1.0)
    by_class = pd.Series(w).groupby(df["label"]).sum()
    assert by_class["angry"] == pytest.approx(0.5) and by_class["sad"] == pytest.approx(0.5)
    by_cell = pd.Series(w).groupby([df["corpus"], df["label"]]).sum()
    assert by_cell[("tess", "angry")] == pytest.approx(0.25)
    assert by_cell[("ravdess", "angry")] == pytest.approx(0.25)


def test_sampling_weights_balanced_over_speakers_count_each_voice_once() -> None:
    # two TESS speakers with many clips, three RAVDESS actors with few: by corpora TESS's two
    # get half of angry's share; by speakers each of the five voices gets a fifth
    rows = ([("tess", "OAF", "angry", "train")] * 40 + [("tess", "YAF", "angry", "train")] * 40
            + [(("ravdess", f"a{i}", "angry", "train")) for i in range(3) for _ in range(4)]
            + [("ravdess", "a0", "sad", "train")] * 6)
    df = map_labels(_clips(rows))
    by_corpora = pd.Series(sampling_weights(df)).groupby([df["corpus"], df["label"]]).sum()
    assert by_corpora[("tess", "angry")] == pytest.approx(0.25)
    w = sampling_weights(df, "speakers")
    assert w.sum() == pytest.approx(1.0)
    by_speaker = pd.Series(w).groupby([df["speaker"], df["label"]]).sum()
    assert by_speaker[("OAF", "angry")] == pytest.approx(0.1)
    assert by_speaker[("a2", "angry")] == pytest.approx(0.1)
    assert by_speaker[("a0", "sad")] == pytest.approx(0.5)    # classes still share equally
    with pytest.raises(ConfigError, match="use one of corpora, speakers"):
        sampling_weights(df, "clips")


def test_read_manifest_resolves_relative_paths_and_names_missing_columns(tmp_path: Path) -> None:
    folder = tmp_path / "mycalls"
    folder.mkdir()
    (folder / "manifest.csv").write_text("path,speaker,emotion,split\nclips/a.wav,ag7,Angry,TRAIN\n")
    df = read_manifest(folder / "manifest.csv")
    assert df.loc[0, "path"] == str(folder / "clips" / "a.wav")
    assert (df.loc[0, "corpus"], df.loc[0, "emotion"], df.loc[0, "split"]) == (
        "mycalls", "angry", "train")
    (folder / "bad.csv").write_text("path,emotion\na.wav,angry\n")
    with pytest.raises(ConfigError, match="speaker, split"):
        read_manifest(folder / "bad.csv")


def test_shared_corpora_build_a_speaker_independent_dataset(callmood_corpora: Path) -> None:
    manifests = [callmood_corpora / c / "manifest.csv" for c in ("ravdess", "emodb", "urdu")]
    df = build_dataset(manifests, val_fraction=0.2, seed=0)
    assert set(df["label"]) == set(EMOTIONS)
    calm = df[df["emotion"] == "calm"]
    assert len(calm) > 0 and (calm["label"] == "neutral").all()
    assert not (df["emotion"] == "boredom").any()
    for corpus, rows in df.groupby("corpus"):
        speakers = {s: set(rows.loc[rows["subset"] == s, "speaker"]) for s in ("train", "val", "test")}
        assert not speakers["train"] & speakers["test"], corpus
        assert not speakers["val"] & (speakers["train"] | speakers["test"]), corpus
        assert speakers["val"], corpus
    assert np.isin(df["label_id"], np.arange(len(EMOTIONS))).all()


def test_baved_arousal_levels_become_ids_with_validation_speakers_drawn_apart(
        callmood_corpora: Path, tmp_path: Path) -> None:
    baved = callmood_corpora / "baved" / "manifest.csv"
    df = build_arousal_dataset([baved], val_fraction=0.2, seed=0)
    raw = pd.read_csv(baved, dtype={"speaker": str})
    assert len(df) == len(raw)                          # every clip has a level
    assert (df["arousal"].map(AROUSAL_LEVELS.index) == df["arousal_id"]).all()
    assert set(df["arousal"]) == set(AROUSAL_LEVELS)
    speakers = {s: set(df.loc[df["subset"] == s, "speaker"]) for s in ("train", "val", "test")}
    assert speakers["val"] and not speakers["val"] & (speakers["train"] | speakers["test"])
    assert all(int(s) % 6 == 0 for s in speakers["test"])     # the corpus's own test ids
    # the emotion corpora's validation speakers do not depend on the arousal corpora
    emotion = [callmood_corpora / c / "manifest.csv" for c in DEFAULT_CORPORA]
    plain = build_dataset(emotion, seed=0)
    with_baved = build_dataset([*emotion, baved], seed=0)      # BAVED rows have no emotion
    columns = ["path", "speaker", "label_id", "subset"]
    assert plain[columns].equals(with_baved[columns])
    # a manifest without levels is refused, naming the levels it needs
    raw.drop(columns=["arousal_level"]).assign(
        path=lambda d: [str(baved.parent / p) for p in d["path"]]).to_csv(
        tmp_path / "manifest.csv", index=False)
    with pytest.raises(ConfigError, match=r"no arousal_level column.*low, neutral, high"):
        build_arousal_dataset([tmp_path / "manifest.csv"])


def _manifest(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mycalls" / "manifest.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_unknown_labels_stop_the_run_instead_of_vanishing(tmp_path: Path) -> None:
    """An operator's 'fearful' or 'joy' rows were dropped without a word: whole classes
    vanished from training, or one class was left."""
    df = _clips([("mycalls", "a1", "fearful", "train"), ("mycalls", "a1", "joy", "train"),
                 ("mycalls", "a2", "fearful", "test"), ("mycalls", "a2", "sad", "train")])
    with pytest.raises(ConfigError, match=r"unknown emotion label\(s\) 'fearful' \(2 rows\), "
                                          r"'joy' \(1 row\); use one of angry, disgust"):
        map_labels(df)


def test_an_operators_row_without_an_emotion_stops_the_run_and_boredom_is_said(
        caplog: pytest.LogCaptureFixture) -> None:
    """An operator's blank emotion cells were dropped without a word (5 of 168 rows trained
    on 163, exit 0), and boredom rows too (a review). BAVED's blank cells stay by design."""
    import logging

    df = _clips([("mycalls", "a1", "", "train"), ("mycalls", "a1", "sad", "train"),
                 ("baved", "s1", "", "train")])
    with pytest.raises(ConfigError, match=r"1 row\(s\) have no emotion \(\S+\); label each "
                                          r"row with one of angry"):
        map_labels(df)
    bored = _clips([("mycalls", "a1", "boredom", "train"), ("mycalls", "a1", "sad", "train"),
                    ("emodb", "03", "boredom", "train")])
    with caplog.at_level(logging.WARNING, logger="training.dataset"):
        assert map_labels(bored)["label"].tolist() == ["sad"]
    assert "1 row(s) labelled 'boredom' (1 row) dropped by design" in caplog.text


def test_a_manifest_names_its_bad_split_values_and_missing_speakers(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "path,speaker,emotion,split\na.wav,s1,sad,train\n"
                               "b.wav,s2,sad,val\nc.wav,s3,sad,validation\n")
    with pytest.raises(ConfigError, match=r"split value\(s\) 'val' \(1 row\), 'validation' "
                                          r"\(1 row\); use train or test"):
        read_manifest(path)
    path = _manifest(tmp_path, "path,speaker,emotion,split\na.wav,s1,sad,train\n"
                               "b.wav,,sad,train\n")
    with pytest.raises(ConfigError, match=r"no speaker on line\(s\) 3"):
        read_manifest(path)
    path = _manifest(tmp_path, "path,speaker,emotion,split,channel\na.wav,s1,sad,train,1\n"
                               "b.wav,s2,sad,train,\nc.wav,s3,sad,train,left\n")
    with pytest.raises(ConfigError, match=r"channel value\(s\) 'left' \(1 row\); use 0"):
        read_manifest(path)


def test_a_speaker_in_both_train_and_test_is_refused(tmp_path: Path) -> None:
    """Calls split by call instead of by agent put an agent in both splits, and the card
    still called the test figures speaker-independent."""
    rows = "".join(f"{s}-{i}.wav,{s},sad,{split}\n" for s, split in
                   (("agentA", "train"), ("agentB", "train"), ("agentC", "test"))
                   for i in range(3))
    leaked = rows + "agentA-9.wav,agentA,sad,test\n"
    with pytest.raises(ConfigError, match=r"speaker\(s\) mycalls:agentA \(1 in all\) have "
                                          "clips in both train and test"):
        build_dataset([_manifest(tmp_path, "path,speaker,emotion,split\n" + leaked)])
    twice = rows + "agentC-0.wav,agentB,sad,train\n"
    # the whole file listed twice: refused as labelled twice, before the split is looked at
    with pytest.raises(ConfigError, match=r"overlap another .* agentC-0.wav \(whole file\)"):
        build_dataset([_manifest(tmp_path, "path,speaker,emotion,split\n" + twice)])
    spans = "".join(f"{r.rstrip()},{i},{i + 1}\n" for i, r in enumerate(twice.splitlines()))
    with pytest.raises(ConfigError, match=r"agentC-0.wav are listed in both train and test"):
        build_dataset([_manifest(tmp_path, "path,speaker,emotion,split,start_s,end_s\n"
                                           + spans)])
    clean = build_dataset([_manifest(tmp_path, "path,speaker,emotion,split,channel\n"
                                     + rows.replace(".wav,", ".wav,").replace("\n", ",1\n"))])
    assert [c.channel for c in clip_sources(clean)] == [1] * len(clean)


def test_a_manifest_labels_spans_of_whole_calls(tmp_path: Path) -> None:
    """An operator labels utterances inside whole calls (start_s / end_s), each file and
    channel decoded once; a span that is not two ordered numbers is named by its line."""
    path = _manifest(tmp_path, "path,speaker,emotion,split,channel,start_s,end_s\n"
                               "call1.wav,cust1,angry,train,1,2.5,6\n"
                               "call1.wav,cust1,sad,train,1,6,9.25\n"
                               "call1.wav,agent7,neutral,train,0,3,8\n"
                               "clip.wav,s2,sad,train,,,\n")
    sources = clip_sources(read_manifest(path))
    root = str(path.parent / "call1.wav")
    assert [(s.path, s.channel, s.start_s, s.end_s) for s in sources[:3]] == [
        (root, 1, 2.5, 6.0), (root, 1, 6.0, 9.25), (root, 0, 3.0, 8.0)]
    assert (sources[3].channel, sources[3].start_s, sources[3].end_s) == (None, None, None)
    for bad in ("a.wav,s1,sad,train,3,2", "a.wav,s1,sad,train,-1,2", "a.wav,s1,sad,train,1,",
                "a.wav,s1,sad,train,one,2", "a.wav,s1,sad,train,1,inf", "a.wav,s1,sad,train,2,2"):
        path = _manifest(tmp_path, "path,speaker,emotion,split,start_s,end_s\n"
                                   f"ok.wav,s1,sad,train,0,1\n{bad}\n")
        with pytest.raises(ConfigError, match=r"line\(s\) 3 have a span that is not two "
                                              r"numbers with 0 <= start_s < end_s"):
            read_manifest(path)
    path = _manifest(tmp_path, "path,speaker,emotion,split,start_s\na.wav,s1,sad,train,1\n")
    with pytest.raises(ConfigError, match="start_s column but no end_s column"):
        read_manifest(path)


def test_overlapping_spans_of_one_file_and_channel_are_refused() -> None:
    """The same speech labelled twice would train (or score) twice, maybe under two labels."""
    def clips(rows: list[tuple[str, float, float, float]]) -> pd.DataFrame:
        return pd.DataFrame(rows, columns=["path", "channel", "start_s", "end_s"]).assign(
            channel=lambda d: d["channel"].astype("Int64"))

    apart = clips([("a.wav", 1, 0.0, 2.0), ("a.wav", 1, 2.0, 3.0), ("a.wav", 0, 0.5, 1.5),
                   ("b.wav", 1, 0.5, 1.5)])
    assert check_spans(apart) is apart            # touching spans and other channels are fine
    with pytest.raises(ConfigError, match=r"1 labelled span\(s\) overlap another of the same "
                                          r"file and channel: a.wav 0-10 s \(line 2\) and "
                                          r"2.5-4 s \(line 3\);"):
        check_spans(clips([("a.wav", 1, 0.0, 10.0), ("a.wav", 1, 2.5, 4.0),
                           ("a.wav", 0, 2.5, 4.0)]))
    # a row without a span labels the whole file: any span of it overlaps
    with pytest.raises(ConfigError, match=r"b.wav \(whole file\) \(line 2\) and 1-2 s"):
        check_spans(clips([("b.wav", 1, float("nan"), float("nan")), ("b.wav", 1, 1.0, 2.0)]))


def test_one_mistyped_end_names_its_own_line_beside_each_span_it_covers(
        tmp_path: Path) -> None:
    """An end_s of 90 typed for 9.0: the error listed the four correct spans after it and
    never the mistyped row, nor any line number (a review)."""
    path = _manifest(tmp_path, "path,speaker,emotion,split,start_s,end_s\n"
                               "c.wav,s1,angry,train,0.5,4.2\n"
                               "\n"                                   # lines counted as in the file
                               "c.wav,s1,sad,train,8.755,90\n"
                               "c.wav,s2,happy,train,13.23,17.068\n"
                               "c.wav,s1,sad,train,20.1,24.9\n")
    with pytest.raises(ConfigError) as info:
        read_manifests([path])
    message = str(info.value)
    assert message.startswith("2 labelled span(s) overlap")
    assert ("c.wav 8.755-90 s (manifest.csv line 4) and 13.23-17.068 s (manifest.csv line 5); "
            "c.wav 8.755-90 s (manifest.csv line 4) and 20.1-24.9 s (manifest.csv line 6)"
            in message), message
    assert "0.5-4.2" not in message


def test_mono_files_and_paths_spelt_two_ways_are_checked_for_overlaps_too(tmp_path: Path) -> None:
    """Rows without a channel (mono calls, the usual case) were never compared: a missing
    channel never equals another. A file reached by two spellings of its path counted as two
    files, for the overlap and the train/test checks alike (a review)."""
    mono = pd.DataFrame({"path": ["m.wav", "m.wav"], "start_s": [1.0, 2.0],
                         "end_s": [3.0, 4.0]})
    with pytest.raises(ConfigError, match=r"m.wav 1-3 s \(line 2\) and 2-4 s \(line 3\)"):
        check_spans(mono)
    whole_twice = pd.DataFrame({"path": ["w.wav", "w.wav"], "channel": [pd.NA, 0]}).assign(
        channel=lambda d: d["channel"].astype("Int64"), start_s=np.nan, end_s=np.nan)
    with pytest.raises(ConfigError, match="overlap"):      # channel 0 of a mono file is it
        check_spans(whole_twice)
    path = _manifest(tmp_path, "path,speaker,emotion,split,start_s,end_s\n"
                               "calls/c1.wav,s1,angry,train,1,3\n"
                               "./calls/../calls/c1.wav,s1,sad,train,2,4\n")
    with pytest.raises(ConfigError, match=r"c1.wav 1-3 s \(manifest.csv line 2\) and 2-4 s "
                                          r"\(manifest.csv line 3\)"):
        read_manifests([path])
    twice = _manifest(tmp_path, "path,speaker,emotion,split,start_s,end_s\n"
                                "calls/c1.wav,s1,angry,train,0,1\nc2.wav,s2,sad,train,0,1\n"
                                "calls/./c1.wav,s3,sad,test,2,3\n")
    with pytest.raises(ConfigError, match="are listed in both train and test"):
        build_dataset([twice])
    arousal = _manifest(tmp_path, "path,speaker,emotion,split,arousal_level,start_s,end_s\n"
                                  "a.wav,s1,,train,high,0,2\na.wav,s1,,train,low,1,3\n")
    with pytest.raises(ConfigError, match="overlap"):
        build_arousal_dataset([arousal])


def test_an_agent_called_na_is_a_speaker_and_an_empty_corpus_cell_is_the_folder(
        tmp_path: Path) -> None:
    """pandas read "NA" and "None" as missing (the agent was refused as having no speaker),
    and an empty corpus cell became a missing corpus in every speaker key."""
    path = _manifest(tmp_path, "path,speaker,emotion,split,corpus\n"
                               "a.wav,NA,sad,train,\nb.wav,None,sad,train,site2\n")
    df = read_manifest(path)
    assert df["speaker"].tolist() == ["NA", "None"]
    assert df["corpus"].tolist() == ["mycalls", "site2"]


def test_errors_name_file_lines_across_blank_lines(tmp_path: Path) -> None:
    """The parser skips blank lines: errors named the line above one (a review), and the
    first fix read a leading blank line as a missing header and dropped lines of commas."""
    path = _manifest(tmp_path, "\npath,speaker,emotion,split\na.wav,s1,sad,train\n\n"
                               "b.wav,,sad,train\n")
    with pytest.raises(ConfigError, match=r"no speaker on line\(s\) 5;"):
        read_manifest(path)
    path = _manifest(tmp_path, "path,speaker,emotion,split\na.wav,s1,sad,train\n,,,\n")
    with pytest.raises(ConfigError, match=r"no speaker on line\(s\) 3;"):
        read_manifest(path)


def test_one_agent_in_train_in_one_folder_and_test_in_another_is_refused(tmp_path: Path) -> None:
    """Manifests in several folders take each folder's name as their corpus: agent-7's
    November calls (train) and December calls (test) counted as two speakers, and the test
    figures scored an agent the model had trained on (a review)."""
    rows = {"nov": "a.wav,agent-7,angry,train\nb.wav,agent-8,sad,train\n",
            "dec": "c.wav,agent-7,happy,test\nd.wav,agent-9,sad,test\n"}
    paths = []
    for folder, text in rows.items():
        path = tmp_path / folder / "manifest.csv"
        path.parent.mkdir()
        path.write_text("path,speaker,emotion,split\n" + text)
        paths.append(path)
    with pytest.raises(ConfigError, match=r"speaker\(s\) agent-7 of your own rows are in train "
                                          r"under one corpus and in test under another"):
        build_dataset(paths)
    for path in paths:   # one corpus: agent-7 is one speaker, in both splits, refused as such
        path.write_text(path.read_text().replace("split\n", "split,corpus\n")
                        .replace("train\n", "train,calls\n").replace("test\n", "test,calls\n"))
    with pytest.raises(ConfigError, match=r"calls:agent-7 \(1 in all\) have clips in both"):
        build_dataset(paths)
    paths[1].write_text(paths[1].read_text().replace("agent-7", "agent-10"))
    assert sorted(set(speaker_keys(build_dataset(paths)))) == [
        "calls:agent-10", "calls:agent-7", "calls:agent-8", "calls:agent-9"]
