//! Flow files: each tenant's conversation flow, read as TOML (relative to
//! the config file), compiled by `threadline_actors::flows::engine`, and
//! reloadable while the node runs.

use std::collections::HashMap;
use std::sync::Arc;

use threadline_actors::flows::engine::{Flow, FlowSpec};

use crate::config::Config;

/// Every tenant's compiled flow; the error names the tenant key, the file
/// and what is wrong.
pub fn load(cfg: &Config) -> Result<HashMap<String, Arc<Flow>>, String> {
    let mut out = HashMap::new();
    for (i, t) in cfg.tenants.iter().enumerate() {
        let Some(rel) = &t.flow else { continue };
        let path = cfg.base_dir.join(rel);
        let key = format!("tenants[{i}].flow");
        let src = std::fs::read_to_string(&path)
            .map_err(|e| format!("`{key}`: cannot read {}: {e}", path.display()))?;
        if src.len() > 1 << 20 {
            return Err(format!("`{key}`: {} is larger than 1 MiB", path.display()));
        }
        let spec: FlowSpec = toml::from_str(&src).map_err(|e| {
            let line = e
                .span()
                .map(|r| src[..r.start].matches('\n').count() + 1)
                .map(|l| format!(" line {l}:"))
                .unwrap_or_default();
            format!("`{key}`: {}:{line} {}", path.display(), e.message().trim())
        })?;
        let flow = Flow::compile(spec).map_err(|e| format!("`{key}`: {}: {e}", path.display()))?;
        out.insert(t.id.clone(), Arc::new(flow));
    }
    Ok(out)
}
