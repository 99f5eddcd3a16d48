//! Fakes of what lies outside clawgate and cannot run here, as real HTTP servers speaking the
//! real wire formats. Used by `clawgate mock llm`, by the integration tests and by benchmarks.

pub mod mock_llm;
pub mod mock_platforms;
pub mod mock_tracking;
