//! The customer's language: detected from what they write (among the languages the deployment
//! serves), else the platform's locale, else the default; kept in the session once known.

use whatlang::{Detector, Lang};

/// ISO 639-1 codes the detector knows, with whatlang's languages.
const KNOWN: &[(&str, Lang)] = &[
    ("nl", Lang::Nld),
    ("en", Lang::Eng),
    ("de", Lang::Deu),
    ("fr", Lang::Fra),
    ("es", Lang::Spa),
    ("it", Lang::Ita),
    ("pt", Lang::Por),
    ("pl", Lang::Pol),
    ("tr", Lang::Tur),
    ("ar", Lang::Ara),
];

/// Fewer words than this say too little about a language (a tracking number, "ok", "hi").
const MIN_WORDS: usize = 3;
/// Confidence below which a detection is not trusted.
const MIN_CONFIDENCE: f64 = 0.3;

/// Short, frequent words that belong to one language only (among those whose customers write
/// short messages most: Dutch, English, German). Character statistics alone often mistake a
/// one-line Dutch question for German; a few such words settle it.
const MARKERS: &[(&str, &[&str])] = &[
    (
        "nl",
        &[
            "ik",
            "je",
            "jij",
            "jullie",
            "mijn",
            "het",
            "een",
            "niet",
            "wel",
            "waar",
            "wanneer",
            "ook",
            "van",
            "wat",
            "hoe",
            "nog",
            "geen",
            "maar",
            "naar",
            "graag",
            "bedankt",
            "hoi",
            "pakket",
            "bezorgen",
            "bezorgd",
            "zaterdag",
            "zondag",
            "kunnen",
            "kan",
            "wordt",
            "heb",
            "heeft",
            "mij",
            "uw",
            "zijn",
            "er",
            "deze",
            "alsjeblieft",
            "gisteren",
            "vandaag",
            "komt",
            "beschadigd",
            "kapot",
        ],
    ),
    (
        "en",
        &[
            "the",
            "my",
            "where",
            "when",
            "you",
            "not",
            "do",
            "does",
            "your",
            "please",
            "thanks",
            "thank",
            "what",
            "how",
            "can",
            "will",
            "it",
            "this",
            "parcel",
            "package",
            "deliver",
            "delivery",
            "saturday",
            "sunday",
            "arrived",
            "damaged",
            "and",
            "to",
            "for",
            "with",
            "have",
            "has",
            "today",
            "tomorrow",
            "yesterday",
            "yet",
            "still",
        ],
    ),
    (
        "de",
        &[
            "ich",
            "mein",
            "meine",
            "ist",
            "nicht",
            "wann",
            "und",
            "der",
            "das",
            "sie",
            "bitte",
            "danke",
            "wir",
            "auch",
            "noch",
            "kein",
            "keine",
            "paket",
            "samstag",
            "sonntag",
            "zustellung",
            "liefern",
            "heute",
            "ein",
            "eine",
            "mir",
            "wo",
            "ihr",
            "haben",
            "habe",
            "kann",
            "können",
            "gestern",
            "kommt",
            "beschädigt",
            "mit",
        ],
    ),
];

/// Tells which of the served languages a message is written in.
pub struct LanguageDetector {
    detector: Option<Detector>,
    /// The served languages that have [`MARKERS`].
    marked: Vec<(&'static str, &'static [&'static str])>,
}

impl LanguageDetector {
    /// A detector choosing among `languages` (ISO 639-1 codes; unknown codes are ignored).
    pub fn new(languages: &[String]) -> LanguageDetector {
        let allow: Vec<Lang> = languages
            .iter()
            .filter_map(|code| KNOWN.iter().find(|(c, _)| c == code).map(|(_, l)| *l))
            .collect();
        let marked = if allow.len() > 1 {
            MARKERS
                .iter()
                .filter(|(code, _)| languages.iter().any(|l| l == code))
                .copied()
                .collect()
        } else {
            Vec::new()
        };
        LanguageDetector {
            // With one language or none there is nothing to choose.
            detector: (allow.len() > 1).then(|| Detector::with_allowlist(allow)),
            marked,
        }
    }

    /// The ISO 639-1 code of the language `text` is written in, when the text says enough.
    pub fn detect(&self, text: &str) -> Option<String> {
        let words = text
            .split_whitespace()
            .filter(|w| w.chars().any(char::is_alphabetic))
            .count();
        if words < MIN_WORDS {
            return None;
        }
        if let Some(code) = self.by_markers(text) {
            return Some(code.to_string());
        }
        let info = self.detector.as_ref()?.detect(text)?;
        if info.confidence() < MIN_CONFIDENCE {
            return None;
        }
        KNOWN
            .iter()
            .find(|(_, lang)| *lang == info.lang())
            .map(|(code, _)| (*code).to_string())
    }

    /// The language with the most marker words, when it has at least two and more than any
    /// other.
    fn by_markers(&self, text: &str) -> Option<&'static str> {
        let lowered = text.to_lowercase();
        let words: Vec<&str> = lowered
            .split(|c: char| !c.is_alphabetic())
            .filter(|w| !w.is_empty())
            .collect();
        let mut votes: Vec<(usize, &'static str)> = self
            .marked
            .iter()
            .map(|(code, markers)| {
                let hits = words.iter().filter(|w| markers.contains(w)).count();
                (hits, *code)
            })
            .collect();
        votes.sort_unstable_by_key(|v| std::cmp::Reverse(v.0));
        match votes.as_slice() {
            [(best, code), rest @ ..] if *best >= 2 && rest.iter().all(|(n, _)| n < best) => {
                Some(code)
            }
            _ => None,
        }
    }
}

/// The text for `language` in a per-language map, else English, else any (skills' answers,
/// lookups' templates, escalation notices).
pub fn by_language<'a>(
    texts: &'a std::collections::BTreeMap<String, String>,
    language: &str,
) -> Option<&'a str> {
    texts
        .get(language)
        .or_else(|| texts.get("en"))
        .or_else(|| texts.values().next())
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn velocity() -> LanguageDetector {
        LanguageDetector::new(&["nl".into(), "en".into(), "de".into()])
    }

    #[test]
    fn tells_dutch_english_and_german_apart() {
        let d = velocity();
        assert_eq!(
            d.detect("Waar is mijn pakket? Het had gisteren moeten komen")
                .as_deref(),
            Some("nl")
        );
        assert_eq!(
            d.detect("Where is my parcel? It should have arrived yesterday")
                .as_deref(),
            Some("en")
        );
        assert_eq!(
            d.detect("Wo ist mein Paket? Es hätte gestern kommen sollen")
                .as_deref(),
            Some("de")
        );
    }

    #[test]
    fn a_short_dutch_question_is_dutch_not_german() {
        let d = velocity();
        for text in [
            "Bezorgen jullie zaterdag ook in 1012 AB?",
            "Mijn pakket is kapot aangekomen",
            "Wanneer komt het?",
        ] {
            assert_eq!(d.detect(text).as_deref(), Some("nl"), "{text}");
        }
        assert_eq!(d.detect("Wann kommt mein Paket an?").as_deref(), Some("de"));
        assert_eq!(
            d.detect("Do you deliver on Saturday in 50667?").as_deref(),
            Some("en")
        );
    }

    #[test]
    fn says_nothing_about_a_few_characters() {
        let d = velocity();
        assert_eq!(d.detect("VC482913577NL"), None);
        assert_eq!(d.detect("ok"), None);
        assert_eq!(
            LanguageDetector::new(&["en".into()]).detect("Where is my parcel now"),
            None
        );
    }
}
