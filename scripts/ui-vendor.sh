#!/usr/bin/env bash
# Copies the web UI's third-party ES modules from the npm registry into server/ui/vendor/,
# where they are committed: `cargo build` embeds them and needs no network or Node.js.
#
# Installs exactly what server/ui/npm/package-lock.json pins (`npm ci`, no install scripts),
# then copies each module with its package.json (the test `ui_vendor` checks that the
# vendored versions are the lockfile's) and its licence. The only change made to a file:
# preact/hooks imports "preact" by a bare name, rewritten to the file next to it (the page
# has no import map), and source-map comments are dropped (the maps are not shipped).
# Run it after changing a version in server/ui/npm/package.json (then `npm install` there
# once to update the lockfile).
set -euo pipefail
cd "$(dirname "$0")/../server/ui"
npm --prefix npm ci --ignore-scripts --no-audit --no-fund >/dev/null
nm=npm/node_modules
rm -rf vendor
mkdir -p vendor/preact vendor/htm vendor/xterm vendor/xterm-addon-fit

strip_map() { sed -e '/^\/\/# sourceMappingURL=/d' -e 's#//\# sourceMappingURL=[^ ]*$##' "$1"; }

strip_map "$nm/preact/dist/preact.module.js" >vendor/preact/preact.module.js
strip_map "$nm/preact/hooks/dist/hooks.module.js" \
  | sed -e 's#from"preact"#from"./preact.module.js"#g' -e "s#from'preact'#from'./preact.module.js'#g" \
  >vendor/preact/hooks.module.js
strip_map "$nm/htm/dist/htm.module.js" >vendor/htm/htm.module.js
strip_map "$nm/@xterm/xterm/lib/xterm.mjs" >vendor/xterm/xterm.mjs
cp "$nm/@xterm/xterm/css/xterm.css" vendor/xterm/xterm.css
strip_map "$nm/@xterm/addon-fit/lib/addon-fit.mjs" >vendor/xterm-addon-fit/addon-fit.mjs

copy_meta() { # package dir in node_modules, vendor dir
  cp "$nm/$1/package.json" "vendor/$2/package.json"
  for l in LICENSE LICENSE.md LICENSE.txt; do
    [ -f "$nm/$1/$l" ] && cp "$nm/$1/$l" "vendor/$2/LICENSE.txt" && break
  done
  true
}
copy_meta preact preact
copy_meta htm htm
copy_meta @xterm/xterm xterm
copy_meta @xterm/addon-fit xterm-addon-fit

if grep -l 'from *"preact"' vendor/preact/*.js >/dev/null 2>&1; then
  echo "ui-vendor: a bare import of preact is left" >&2
  exit 1
fi
echo "ui-vendor: copied $(find vendor -type f | wc -l) files into server/ui/vendor"
