//! Skills: what the agent knows how to do, one folder per skill with a `SKILL.md` (YAML front
//! matter + markdown instructions), and the routing of a message to one of them.
//!
//! This is the basic form: keyword triggers, per-language template answers and the instruction
//! body. A skill that cannot be read is reported with its file, line and reason and skipped; the
//! others still load. Hot reload, lookups and escalation build on this module later.

use crate::lookup::{Answer, Lookup};
use arc_swap::ArcSwap;
use regex::Regex;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Name of the skill used when nothing else matches.
pub const GENERAL: &str = "general";

/// One loaded skill.
#[derive(Debug, Clone)]
pub struct Skill {
    /// Unique name, stored in the session and on every assistant message.
    pub name: String,
    /// One line on what it handles.
    pub description: String,
    /// Lower-cased trigger keywords or phrases.
    pub keywords: Vec<String>,
    /// Canned answers by language code, used by the template provider.
    pub templates: BTreeMap<String, String>,
    /// Instructions appended to the system prompt.
    pub instructions: String,
    /// Regular expressions (e.g. a tracking-number format); one match outranks any number of
    /// keywords.
    pub patterns: Vec<Regex>,
    /// The data lookup, when the skill declares one.
    pub lookup: Option<Lookup>,
    /// When and how this skill hands a conversation to a person.
    pub escalate: Option<Escalate>,
    /// Among skills whose triggers match, the highest priority wins whatever the others score
    /// (a damaged parcel with a tracking number is a complaint, not a tracking question).
    pub priority: i64,
    /// The `SKILL.md` it came from (none for the built-in general skill).
    pub source: Option<PathBuf>,
}

impl PartialEq for Skill {
    fn eq(&self, other: &Skill) -> bool {
        self.name == other.name
            && self.keywords == other.keywords
            && self.templates == other.templates
            && self.instructions == other.instructions
    }
}

impl Skill {
    /// The canned answer in `language`, else English, else any.
    pub fn template(&self, language: &str) -> Option<&str> {
        crate::language::by_language(&self.templates, language)
    }

    /// How many of this skill's keywords occur in `lowered` (the lower-cased message), as whole
    /// words, plus 100 per pattern matching the message as written.
    fn score(&self, text: &str, lowered: &str) -> usize {
        let keywords = self
            .keywords
            .iter()
            .filter(|k| contains_word(lowered, k))
            .count();
        let patterns = self.patterns.iter().filter(|p| p.is_match(text)).count();
        keywords + 100 * patterns
    }
}

/// A skill's `escalate` rule: which messages hand the conversation to a person, and what the
/// customer is told then and while the person has it.
#[derive(Debug, Clone)]
pub struct Escalate {
    /// Lower-cased words or phrases that escalate; with no keywords and no patterns, every
    /// message routed to the skill does.
    pub keywords: Vec<String>,
    /// Regular expressions that escalate.
    pub patterns: Vec<Regex>,
    /// What the customer is told when the conversation is handed over, by language
    /// (`{reference}` is the escalation's reference).
    pub answer: BTreeMap<String, String>,
    /// What the customer is told about each message while the hand-over is pending, by language.
    pub pending: BTreeMap<String, String>,
}

impl Escalate {
    /// Why `text` escalates, when it does.
    pub fn reason(&self, text: &str) -> Option<String> {
        if self.keywords.is_empty() && self.patterns.is_empty() {
            return Some("every message of this skill escalates".into());
        }
        let lowered = text.to_lowercase();
        if let Some(k) = self.keywords.iter().find(|k| contains_word(&lowered, k)) {
            return Some(format!("keyword \"{k}\""));
        }
        self.patterns
            .iter()
            .find(|p| p.is_match(text))
            .map(|p| format!("pattern \"{}\"", p.as_str()))
    }
}

/// What the triggers say about a message.
#[derive(Debug)]
pub enum Routing<'a> {
    /// One skill.
    Decided(&'a Skill),
    /// No single skill: `fallback` is what routing without a model picks, `candidates` are the
    /// skills a model may choose among.
    Undecided {
        /// The general skill, or the first of a tie.
        fallback: &'a Skill,
        /// The skills in question.
        candidates: Vec<&'a Skill>,
    },
}

/// A skill that could not be loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct SkillError {
    /// The `SKILL.md` (or folder) concerned.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for SkillError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

/// The loaded skills and the general fallback.
#[derive(Debug, Clone)]
pub struct SkillSet {
    skills: Vec<Skill>,
    general: Skill,
}

#[derive(Deserialize)]
struct FrontMatter {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    triggers: Triggers,
    #[serde(default)]
    template: Option<Templates>,
    #[serde(default)]
    lookup: Option<LookupSpec>,
    #[serde(default)]
    escalate: Option<EscalateSpec>,
    #[serde(default)]
    priority: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EscalateSpec {
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
    #[serde(default)]
    answer: BTreeMap<String, String>,
    #[serde(default)]
    pending: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct Triggers {
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupSpec {
    url: String,
    #[serde(default)]
    extract: BTreeMap<String, String>,
    #[serde(default, rename = "timeoutMs")]
    timeout_ms: Option<u64>,
    #[serde(default)]
    fields: Vec<String>,
    #[serde(default)]
    answers: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Templates {
    One(String),
    ByLanguage(BTreeMap<String, String>),
}

impl SkillSet {
    /// Loads every `<dir>/*/SKILL.md`. A missing folder yields only the built-in general skill.
    pub fn load(dir: &Path) -> (SkillSet, Vec<SkillError>) {
        let mut errors = Vec::new();
        let mut skills = Vec::new();
        let mut folders: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect(),
            Err(e) => {
                errors.push(SkillError {
                    file: dir.to_path_buf(),
                    line: None,
                    reason: format!("cannot read the skills folder: {e}"),
                });
                Vec::new()
            }
        };
        folders.sort();
        for folder in folders {
            let file = folder.join("SKILL.md");
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(e) => {
                    errors.push(SkillError {
                        file,
                        line: None,
                        reason: format!("cannot read: {e}"),
                    });
                    continue;
                }
            };
            match parse_skill(&text) {
                Ok(skill) if skills.iter().any(|s: &Skill| s.name == skill.name) => {
                    errors.push(SkillError {
                        file,
                        line: Some(2),
                        reason: format!("duplicate skill name \"{}\"; skipped", skill.name),
                    });
                }
                Ok(skill) => skills.push(Skill {
                    source: Some(file),
                    ..skill
                }),
                Err((line, reason)) => errors.push(SkillError { file, line, reason }),
            }
        }
        (SkillSet::from_skills(skills), errors)
    }

    /// A set of `skills`; the one named `general`, if any, becomes the fallback.
    pub fn from_skills(mut skills: Vec<Skill>) -> SkillSet {
        let general = match skills.iter().position(|s| s.name == GENERAL) {
            Some(i) => skills.remove(i),
            None => builtin_general(),
        };
        SkillSet { skills, general }
    }

    /// Names of all skills, the general one last.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.skills.iter().map(|s| s.name.as_str()).collect();
        names.push(&self.general.name);
        names
    }

    /// The skill for `text`: among the skills whose triggers match, those of the highest
    /// priority, then the best match; on a tie or no match, the conversation's active skill when
    /// it is among the candidates; otherwise the general skill (or the first of a tie).
    pub fn route(&self, text: &str, active_skill: Option<&str>) -> &Skill {
        match self.routing(text, active_skill) {
            Routing::Decided(skill) => skill,
            Routing::Undecided { fallback, .. } => fallback,
        }
    }

    /// Like [`SkillSet::route`], but says when the triggers could not decide (no match and no
    /// active skill, or a tie the active skill does not settle), so a model may be asked.
    pub fn routing(&self, text: &str, active_skill: Option<&str>) -> Routing<'_> {
        let lowered = text.to_lowercase();
        let scores: Vec<((i64, usize), &Skill)> = self
            .skills
            .iter()
            .map(|s| (s.score(text, &lowered), s))
            .filter(|(score, _)| *score > 0)
            .map(|(score, s)| ((s.priority, score), s))
            .collect();
        let active = active_skill.and_then(|name| self.get(name));
        let Some(best) = scores.iter().map(|(score, _)| *score).max() else {
            return match active {
                Some(skill) => Routing::Decided(skill),
                None => Routing::Undecided {
                    fallback: &self.general,
                    candidates: self.skills.iter().chain([&self.general]).collect(),
                },
            };
        };
        let tied: Vec<&Skill> = scores
            .iter()
            .filter(|(score, _)| *score == best)
            .map(|(_, s)| *s)
            .collect();
        match (active, tied.as_slice()) {
            (_, [only]) => Routing::Decided(only),
            (Some(a), _) if tied.iter().any(|s| s.name == a.name) => Routing::Decided(a),
            (_, [first, ..]) => Routing::Undecided {
                fallback: first,
                candidates: tied.clone(),
            },
            (_, []) => Routing::Decided(&self.general),
        }
    }

    /// The skill named `name`, including the general one.
    pub fn get(&self, name: &str) -> Option<&Skill> {
        if name == self.general.name {
            return Some(&self.general);
        }
        self.skills.iter().find(|s| s.name == name)
    }

    /// Points skill `name`'s lookup at `url` (the deployment's `skills.lookupUrls`); false when
    /// no loaded skill of that name has a lookup.
    pub fn set_lookup_url(&mut self, name: &str, url: &str) -> bool {
        let skill = if name == self.general.name {
            Some(&mut self.general)
        } else {
            self.skills.iter_mut().find(|s| s.name == name)
        };
        match skill.and_then(|s| s.lookup.as_mut()) {
            Some(lookup) => {
                lookup.url = url.to_string();
                true
            }
            None => false,
        }
    }

    /// The general skill's canned answer, the answer of last resort.
    pub fn general_template(&self, language: &str) -> &str {
        self.general.template(language).unwrap_or(DEFAULT_ANSWER_EN)
    }
}

const DEFAULT_ANSWER_EN: &str =
    "Thank you for your message. We have received it and will get back to you shortly.";

fn builtin_general() -> Skill {
    let templates = [
        ("en", DEFAULT_ANSWER_EN),
        (
            "nl",
            "Bedankt voor je bericht. We hebben het ontvangen en komen er zo snel mogelijk op terug.",
        ),
        (
            "de",
            "Vielen Dank für Ihre Nachricht. Wir haben sie erhalten und melden uns so schnell wie möglich.",
        ),
    ];
    Skill {
        name: GENERAL.into(),
        description: "Anything no other skill handles.".into(),
        keywords: Vec::new(),
        templates: templates
            .iter()
            .map(|(l, t)| (l.to_string(), t.to_string()))
            .collect(),
        instructions: String::new(),
        patterns: Vec::new(),
        lookup: None,
        escalate: None,
        priority: 0,
        source: None,
    }
}

/// The skills a replica answers with, reloaded from disk while it runs: a changed `SKILL.md`
/// takes effect within a poll interval, and one that no longer parses leaves its last good
/// version active (reported in `/healthz`). Nothing is ever written to the skills folder, so a
/// read-only mount works.
pub struct SkillLibrary {
    /// The skills folder.
    dir: PathBuf,
    /// The deployment's lookup URLs by skill name, applied after every load (replaced when the
    /// config is reloaded).
    lookup_urls: ArcSwap<BTreeMap<String, String>>,
    /// What turns route with; swapped whole on reload.
    current: ArcSwap<SkillSet>,
    /// Problems of the last load, as `file:line: reason`.
    errors: ArcSwap<Vec<String>>,
    /// Paths, sizes and modification times of the `SKILL.md` files at the last load.
    fingerprint: Mutex<Fingerprint>,
}

/// Path, size and modification time of every `SKILL.md`, sorted.
type Fingerprint = Vec<(PathBuf, u64, Option<std::time::SystemTime>)>;

impl SkillLibrary {
    /// Loads `dir` and applies `lookup_urls`; problems are logged and kept for `/healthz`.
    pub fn load(dir: &Path, lookup_urls: BTreeMap<String, String>) -> SkillLibrary {
        let library = SkillLibrary {
            dir: dir.to_path_buf(),
            lookup_urls: ArcSwap::from_pointee(lookup_urls),
            current: ArcSwap::from_pointee(SkillSet::from_skills(Vec::new())),
            errors: ArcSwap::from_pointee(Vec::new()),
            fingerprint: Mutex::new(Vec::new()),
        };
        library.reload(fingerprint(dir));
        library
    }

    /// The skills to route with now.
    pub fn current(&self) -> Arc<SkillSet> {
        self.current.load_full()
    }

    /// Problems found by the last load.
    pub fn errors(&self) -> Vec<String> {
        self.errors.load().as_ref().clone()
    }

    /// Points skills at new lookup URLs (a reloaded config's `skills.lookupUrls`) and reloads the
    /// folder when they differ from the current ones. Blocking: it reads the folder.
    pub fn set_lookup_urls(&self, urls: BTreeMap<String, String>) {
        if **self.lookup_urls.load() != urls {
            self.lookup_urls.store(Arc::new(urls));
            self.reload(fingerprint(&self.dir));
        }
    }

    /// Reloads when a `SKILL.md` was added, removed or changed since the last load; true when
    /// it reloaded.
    pub fn reload_if_changed(&self) -> bool {
        let now = fingerprint(&self.dir);
        let changed = {
            let last = self
                .fingerprint
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *last != now
        };
        if changed {
            self.reload(now);
        }
        changed
    }

    /// Polls the folder every `interval` until `cancel`.
    pub async fn watch(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let library = self.clone();
            // File reads are blocking; keep them off the async workers.
            let _ = tokio::task::spawn_blocking(move || library.reload_if_changed()).await;
        }
    }

    /// Loads the folder; `seen` is its fingerprint taken before reading, so a change made during
    /// the load is picked up by the next poll.
    fn reload(&self, seen: Fingerprint) {
        let (mut set, errors) = SkillSet::load(&self.dir);
        let previous = self.current.load_full();
        // A skill whose file no longer parses keeps its last good version.
        let mut kept = Vec::new();
        for error in &errors {
            if let Some(old) = previous
                .skills
                .iter()
                .find(|s| s.source.as_deref() == Some(error.file.as_path()))
                && set.get(&old.name).is_none()
            {
                kept.push(old.name.clone());
                set.skills.push(old.clone());
            }
        }
        for (skill, url) in self.lookup_urls.load().iter() {
            if !set.set_lookup_url(skill, url) {
                tracing::warn!(
                    skill,
                    "skills.lookupUrls names a skill that is not loaded or has no lookup"
                );
            }
        }
        for error in &errors {
            tracing::warn!(%error, "skill not loaded");
        }
        if !kept.is_empty() {
            tracing::warn!(skills = ?kept, "kept the last good version of skills whose files no longer load");
        }
        tracing::info!(skills = ?set.names(), "skills loaded");
        self.current.store(Arc::new(set));
        self.errors
            .store(Arc::new(errors.iter().map(ToString::to_string).collect()));
        *self
            .fingerprint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = seen;
    }
}

/// The [`Fingerprint`] of `<dir>/*/SKILL.md`.
fn fingerprint(dir: &Path) -> Fingerprint {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path().join("SKILL.md"))
        .filter_map(|file| {
            let meta = std::fs::metadata(&file).ok()?;
            Some((file, meta.len(), meta.modified().ok()))
        })
        .collect();
    files.sort();
    files
}

/// Parses a `SKILL.md`; errors carry a 1-based line of the file when known.
fn parse_skill(text: &str) -> Result<Skill, (Option<u64>, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let rest = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
        .ok_or((
            Some(1),
            "expected YAML front matter starting with a `---` line".to_string(),
        ))?;
    let (yaml, body) = split_front_matter(rest).ok_or((
        None,
        "front matter is not closed: expected a `---` line after it".to_string(),
    ))?;
    let front: FrontMatter = serde_saphyr::from_str(yaml).map_err(|e| {
        // The front matter starts on line 2 of the file.
        let line = e.location().map(|l| l.line() + 1);
        let reason = e
            .to_string()
            .lines()
            .next()
            .unwrap_or("invalid YAML")
            .to_string();
        (line, format!("invalid front matter: {reason}"))
    })?;
    let name = front.name.trim().to_string();
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if !valid_name {
        return Err((
            Some(2),
            format!("`name` must be letters, digits, '-' or '_', found \"{name}\""),
        ));
    }
    let templates = match front.template {
        None => BTreeMap::new(),
        Some(Templates::One(t)) => BTreeMap::from([("en".to_string(), t)]),
        Some(Templates::ByLanguage(map)) => map,
    };
    let regex = |what: &str, source: &str| {
        Regex::new(source).map_err(|e| {
            (
                None,
                format!(
                    "{what} is not a valid regular expression: {}",
                    e.to_string().lines().last().unwrap_or("invalid")
                ),
            )
        })
    };
    let patterns = front
        .triggers
        .patterns
        .iter()
        .map(|p| regex(&format!("triggers.patterns \"{p}\""), p))
        .collect::<Result<Vec<_>, _>>()?;
    let lookup = match front.lookup {
        None => None,
        Some(spec) => {
            if !spec.url.starts_with("http://") && !spec.url.starts_with("https://") {
                return Err((
                    None,
                    format!(
                        "lookup.url must be an http:// or https:// URL, found \"{}\"",
                        spec.url
                    ),
                ));
            }
            let mut answers = Vec::with_capacity(spec.answers.len());
            for (key, by_language) in spec.answers {
                let (outcome, condition) = Answer::parse_key(&key).map_err(|e| (None, e))?;
                answers.push(Answer {
                    outcome,
                    condition,
                    by_language: trimmed(by_language),
                });
            }
            let extract = spec
                .extract
                .iter()
                .map(|(name, p)| Ok((name.clone(), regex(&format!("lookup.extract.{name}"), p)?)))
                .collect::<Result<Vec<_>, (Option<u64>, String)>>()?;
            Some(Lookup {
                url: spec.url,
                extract,
                timeout: Duration::from_millis(spec.timeout_ms.unwrap_or(2_000)),
                fields: spec.fields,
                answers,
            })
        }
    };
    let escalate = match front.escalate {
        None => None,
        Some(spec) => Some(Escalate {
            keywords: lowered_keywords(&spec.keywords),
            patterns: spec
                .patterns
                .iter()
                .map(|p| regex(&format!("escalate.patterns \"{p}\""), p))
                .collect::<Result<Vec<_>, _>>()?,
            answer: trimmed(spec.answer),
            pending: trimmed(spec.pending),
        }),
    };
    Ok(Skill {
        patterns,
        lookup,
        escalate,
        priority: front.priority,
        source: None,
        name,
        description: front.description,
        keywords: lowered_keywords(&front.triggers.keywords),
        templates: trimmed(templates),
        instructions: body.trim().to_string(),
    })
}

/// Keywords as matched: trimmed, lower-cased, empty ones dropped.
fn lowered_keywords(keywords: &[String]) -> Vec<String> {
    keywords
        .iter()
        .map(|k| k.trim().to_lowercase())
        .filter(|k| !k.is_empty())
        .collect()
}

/// Per-language texts with surrounding whitespace removed.
fn trimmed(texts: BTreeMap<String, String>) -> BTreeMap<String, String> {
    texts
        .into_iter()
        .map(|(l, t)| (l, t.trim().to_string()))
        .collect()
}

/// Splits `yaml---body` at the first line that is exactly `---`.
fn split_front_matter(rest: &str) -> Option<(&str, &str)> {
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" {
            return Some((&rest[..offset], &rest[offset + line.len()..]));
        }
        offset += line.len();
    }
    None
}

/// Whether `needle` occurs in `haystack` with no letter or digit right before or after it.
fn contains_word(haystack: &str, needle: &str) -> bool {
    haystack.match_indices(needle).any(|(start, _)| {
        let before = haystack[..start].chars().next_back();
        let after = haystack[start + needle.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder).unwrap_or_default();
        std::fs::write(folder.join("SKILL.md"), text).unwrap_or_default();
    }

    const TRACKING: &str = "---\nname: tracking\ndescription: Parcel status\ntriggers:\n  keywords: [tracking, pakket, \"where is\"]\ntemplate:\n  en: Your parcel status is being checked.\n  nl: We kijken de status van je pakket na.\n---\nUse the tracking number.\n";

    #[test]
    fn loads_valid_skills_and_reports_broken_ones_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        write(dir.path(), "tracking", TRACKING);
        write(
            dir.path(),
            "broken",
            "---\nname: broken\ntriggers: [unclosed\n---\nbody\n",
        );
        write(dir.path(), "nofront", "just text\n");
        let (set, errors) = SkillSet::load(dir.path());
        assert_eq!(set.names(), vec!["tracking", "general"]);
        assert_eq!(errors.len(), 2, "{errors:?}");
        let broken = errors.iter().find(|e| e.file.ends_with("broken/SKILL.md"));
        assert!(
            broken.is_some_and(|e| e.line.is_some_and(|l| l >= 3)),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.file.ends_with("nofront/SKILL.md") && e.line == Some(1))
        );
        let tracking = set.get("tracking");
        assert_eq!(
            tracking.and_then(|s| s.template("nl")),
            Some("We kijken de status van je pakket na.")
        );
        assert_eq!(
            tracking.and_then(|s| s.template("de")),
            Some("Your parcel status is being checked.")
        );
        assert_eq!(
            tracking.map(|s| s.instructions.as_str()),
            Some("Use the tracking number.")
        );
    }

    #[test]
    fn routes_by_keyword_then_active_skill_then_general() {
        let skill = |name: &str, keywords: &[&str]| Skill {
            name: name.into(),
            description: String::new(),
            keywords: keywords.iter().map(|k| k.to_string()).collect(),
            templates: BTreeMap::new(),
            instructions: String::new(),
            patterns: Vec::new(),
            lookup: None,
            escalate: None,
            priority: 0,
            source: None,
        };
        let set = SkillSet::from_skills(vec![
            skill("tracking", &["tracking", "pakket"]),
            skill("complaints", &["complaint", "klacht", "pakket"]),
        ]);
        assert_eq!(
            set.route("Waar is mijn PAKKET? tracking VC1", None).name,
            "tracking"
        );
        assert_eq!(set.route("Ik heb een klacht", None).name, "complaints");
        // Tie on "pakket": the active skill wins.
        assert_eq!(set.route("pakket", Some("complaints")).name, "complaints");
        // No keyword: follow the conversation, else general.
        assert_eq!(
            set.route("and tomorrow?", Some("tracking")).name,
            "tracking"
        );
        assert_eq!(set.route("hello", None).name, GENERAL);
        // Whole words only: "pakketje" is not "pakket".
        assert_eq!(set.route("pakketje", None).name, GENERAL);
    }

    const WITH_LOOKUP: &str = "---\nname: tracking\ntriggers:\n  keywords: [pakket]\n  patterns: ['\\bVC\\d{9}[A-Z]{2}\\b']\nlookup:\n  url: http://t/packages/{n}\n  extract:\n    n: '(VC\\d{9}[A-Z]{2})'\n  fields: [status]\n  answers:\n    found:\n      en: '{n} is {status}'\n---\nbody\n";

    #[test]
    fn a_pattern_match_outranks_keywords_and_the_lookup_is_loaded() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        write(dir.path(), "tracking", WITH_LOOKUP);
        write(
            dir.path(),
            "complaints",
            "---\nname: complaints\ntriggers:\n  keywords: [kapot, boos, schade]\n---\nbody\n",
        );
        let (set, errors) = SkillSet::load(dir.path());
        assert!(errors.is_empty(), "{errors:?}");
        // Three complaint keywords, but a tracking number: the tracking skill.
        let routed = set.route("kapot, boos, schade! VC482913577NL", None);
        assert_eq!(routed.name, "tracking");
        let lookup = routed.lookup.as_ref().unwrap_or_else(|| panic!("lookup"));
        assert_eq!(lookup.url, "http://t/packages/{n}");
        assert_eq!(lookup.timeout, Duration::from_secs(2));
        assert_eq!(set.route("kapot en boos", None).name, "complaints");
    }

    #[test]
    fn a_higher_priority_skill_wins_any_match_and_its_escalate_rule_is_loaded() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        write(dir.path(), "tracking", WITH_LOOKUP);
        write(
            dir.path(),
            "complaints",
            "---\nname: complaints\npriority: 10\ntriggers:\n  keywords: [kapot]\nescalate:\n  keywords: [kapot]\n  patterns: ['(?i)refund']\n  answer:\n    en: 'Ref {reference}'\n---\nbody\n",
        );
        let (set, errors) = SkillSet::load(dir.path());
        assert!(errors.is_empty(), "{errors:?}");
        // A tracking number and one complaint word: the complaint outranks.
        let routed = set.route("VC482913577NL kapot!", None);
        assert_eq!(routed.name, "complaints");
        assert_eq!(set.route("waar is VC482913577NL", None).name, "tracking");
        let rule = routed.escalate.as_ref().unwrap_or_else(|| panic!("rule"));
        assert_eq!(
            rule.reason("alles KAPOT").as_deref(),
            Some("keyword \"kapot\"")
        );
        assert!(rule.reason("I want a Refund").is_some());
        assert_eq!(rule.reason("thanks"), None);
    }

    #[test]
    fn an_invalid_pattern_or_lookup_is_reported_and_skipped() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        write(
            dir.path(),
            "badregex",
            "---\nname: badregex\ntriggers:\n  patterns: ['(unclosed']\n---\nbody\n",
        );
        write(
            dir.path(),
            "badlookup",
            "---\nname: badlookup\nlookup:\n  url: ftp://x\n---\nbody\n",
        );
        let (set, errors) = SkillSet::load(dir.path());
        assert_eq!(set.names(), vec![GENERAL]);
        let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("badregex/SKILL.md")
                    && r.contains("not a valid regular expression")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("badlookup/SKILL.md") && r.contains("lookup.url")),
            "{reasons:?}"
        );
    }

    proptest::proptest! {
        /// Any `SKILL.md` is a skill or an error with a reason, never a panic.
        #[test]
        fn any_skill_file_is_a_skill_or_a_reason(
            front in ".{0,200}",
            json in crate::arbitrary::json(),
            body in ".{0,100}",
        ) {
            // Free text, and JSON (which is YAML) as front matter.
            for text in [
                format!("---\n{front}\n---\n{body}"),
                format!("---\n{json}\n---\n{body}"),
                front.clone(),
            ] {
                if let Err((_, reason)) = parse_skill(&text) {
                    proptest::prop_assert!(!reason.is_empty());
                }
            }
        }
    }
}
