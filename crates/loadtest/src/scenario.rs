//! What simulated customers write: VeloCity's inquiries in Dutch, English and German, with real
//! tracking numbers and postal codes of the example data set, and the ids that make every run's
//! customers and messages new to the gateway (a rerun must not find last run's history).

use crate::plan::{Channel, Inquiry};

/// Tracking numbers of `examples/velocity/data/packages.json`.
const TRACKING_NUMBERS: [&str; 8] = [
    "VC482913577NL",
    "VC100200300BE",
    "VC109835092DE",
    "VC123019232NL",
    "VC216999444BE",
    "VC276994455DE",
    "VC143068605NL",
    "VC241641500NL",
];

/// Postal codes of the same data set (NL, BE, DE).
const POSTAL_CODES: [&str; 6] = ["1012 AB", "2000", "5611 AZ", "45127", "2511 CV", "9711 LM"];

/// The customer's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// Dutch (half of VeloCity's customers).
    Nl,
    /// English.
    En,
    /// German.
    De,
}

impl Language {
    /// From a roll in `0.0..1.0`: 50 % Dutch, 30 % English, 20 % German.
    pub fn pick(roll: f64) -> Language {
        if roll < 0.5 {
            Language::Nl
        } else if roll < 0.8 {
            Language::En
        } else {
            Language::De
        }
    }

    /// ISO 639-1 code (Telegram's `language_code`).
    pub fn code(self) -> &'static str {
        match self {
            Language::Nl => "nl",
            Language::En => "en",
            Language::De => "de",
        }
    }
}

/// The `turn`-th message (1-based) of a conversation about `inquiry`. `pick` chooses the parcel
/// or the postal code. Tracking and estimates texts avoid the complaint words, so only complaint
/// conversations are handed to a person.
pub fn message(inquiry: Inquiry, language: Language, turn: usize, pick: usize) -> String {
    let number = TRACKING_NUMBERS[pick % TRACKING_NUMBERS.len()];
    let code = POSTAL_CODES[pick % POSTAL_CODES.len()];
    let texts: [&str; 4] = match (inquiry, language) {
        (Inquiry::Tracking, Language::Nl) => [
            "Hoi, waar is mijn pakket {number}?",
            "Kun je nog eens kijken naar {number}?",
            "Dank je. Is er al een tijdvak bekend?",
            "Oké, top.",
        ],
        (Inquiry::Tracking, Language::En) => [
            "Hi, where is my parcel {number}?",
            "Could you check {number} once more please?",
            "Thanks. Is there a time window yet?",
            "Great, thank you.",
        ],
        (Inquiry::Tracking, Language::De) => [
            "Hallo, wo ist mein Paket {number}?",
            "Können Sie {number} bitte noch einmal prüfen?",
            "Danke. Gibt es schon ein Zeitfenster?",
            "Gut, danke schön.",
        ],
        (Inquiry::Estimates, Language::Nl) => [
            "Bezorgen jullie op zaterdag in {code}?",
            "En hoe laat komt de bezorger meestal?",
            "Kan het ook morgen?",
            "Prima, dank je.",
        ],
        (Inquiry::Estimates, Language::En) => [
            "Do you deliver on Saturday in {code}?",
            "And at what time does the courier usually come?",
            "Could it be tomorrow?",
            "Fine, thanks.",
        ],
        (Inquiry::Estimates, Language::De) => [
            "Liefern Sie am Samstag nach {code}?",
            "Und um wie viel Uhr kommt der Fahrer meistens?",
            "Geht es auch morgen?",
            "Gut, danke.",
        ],
        (Inquiry::Complaints, Language::Nl) => [
            "Mijn pakket {number} is beschadigd aangekomen, de doos is kapot.",
            "Wanneer hoor ik iets van jullie?",
            "Hallo? Ik wacht nog steeds.",
            "Oké.",
        ],
        (Inquiry::Complaints, Language::En) => [
            "My parcel {number} arrived damaged, the box is broken.",
            "When will I hear from you?",
            "Hello? I am still waiting.",
            "Okay.",
        ],
        (Inquiry::Complaints, Language::De) => [
            "Mein Paket {number} ist beschädigt angekommen.",
            "Wann höre ich von Ihnen?",
            "Hallo? Ich warte immer noch.",
            "Okay.",
        ],
    };
    let index = turn.saturating_sub(1);
    let text = texts[index.min(texts.len() - 1)]
        .replace("{number}", number)
        .replace("{code}", code);
    if index < texts.len() {
        text
    } else {
        // Longer conversations than the script: numbered, so each message stays recognisable.
        format!("{text} ({turn})")
    }
}

/// Names customers and messages so that no two runs, customers or messages share an id.
#[derive(Debug, Clone, Copy)]
pub struct Ids {
    /// This run, five decimal digits.
    run: u32,
}

impl Ids {
    /// Ids of a run numbered `run` (random per run).
    pub fn new(run: u32) -> Ids {
        Ids { run: run % 100_000 }
    }

    /// The customer's id on `channel`: web-chat session, WhatsApp `wa_id` (digits), Telegram
    /// chat id (digits).
    pub fn customer(&self, channel: Channel, n: u64) -> String {
        match channel {
            Channel::Webchat => format!("lt{:05}-{n}", self.run),
            Channel::Whatsapp => format!("49{:05}{:07}", self.run, n % 10_000_000),
            Channel::Telegram => format!("77{:05}{:07}", self.run, n % 10_000_000),
        }
    }

    /// The platform id of the customer's `turn`-th message.
    pub fn message(&self, channel: Channel, customer: &str, turn: usize) -> String {
        match channel {
            Channel::Webchat => format!("m{turn}"),
            Channel::Whatsapp => format!("wamid.LT{customer}{turn:03}"),
            Channel::Telegram => turn.to_string(),
        }
    }

    /// Telegram `update_id`s must be unique per bot: this run's `n`-th update.
    pub fn update_id(&self, n: u64) -> u64 {
        u64::from(self.run) * 1_000_000_000 + n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_fill_the_data_and_ids_do_not_collide() {
        let text = message(Inquiry::Tracking, Language::Nl, 1, 0);
        assert_eq!(text, "Hoi, waar is mijn pakket VC482913577NL?");
        assert!(message(Inquiry::Estimates, Language::En, 1, 1).contains(" 2000?"));
        assert!(message(Inquiry::Tracking, Language::De, 7, 0).ends_with("(7)"));
        let ids = Ids::new(123_456);
        let a = ids.customer(Channel::Whatsapp, 1);
        assert!(a.chars().all(|c| c.is_ascii_digit()), "{a}");
        assert_ne!(a, ids.customer(Channel::Whatsapp, 2));
        assert_ne!(a, Ids::new(7).customer(Channel::Whatsapp, 1));
        assert_ne!(ids.update_id(1), Ids::new(8).update_id(1));
    }
}
