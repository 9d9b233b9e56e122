// Architecture badge next to the "Stable Diffusion checkpoint" dropdown (A1111 1.6-1.10).
// Shows the family of a distilled SDXL checkpoint (SSD-1B, Segmind-Vega, KOALA ...) as reported
// by the extension's route GET /ssd1b/v1/inspect, and a warning for files it would refuse.
// Plain ES2017, no build step. The formatting functions are pure so tests run them under node.
(function() {
    'use strict';

    // Relative, like A1111's own "./internal/..." calls, so a --subpath deployment works too.
    var ROUTE = './ssd1b/v1/inspect';
    var DROPDOWN_ID = 'setting_sd_model_checkpoint';
    var REFRESH_ID = 'refresh_sd_model_checkpoint';
    var BADGE_ID = 'ssd1b_arch_badge';
    var DEBOUNCE_MS = 250;
    var POLL_MS = 500;
    var RETRY_MS = 10000;

    // Models the host loads on its own (extensions_ssd1b.arch.detect.OTHER_MODEL_KINDS). The route
    // reports them as ok=false, but an SD1.5 checkpoint is no problem, so they get no badge.
    var NOT_SDXL_PREFIX = 'not an SDXL-family checkpoint: ';
    var HOST_KINDS = [
        'an SD 1.x/2.x-style UNet',
        "diffusers UNet without SDXL's text-time embedding",
        'an unknown model',
    ];
    var TEXT_ENCODERS = ['CLIP-L', 'OpenCLIP-bigG'];
    var MIDDLE_NAMES = {'res-attn-res': 'full (ResBlock, attention, ResBlock)', 'res': 'ResBlock only', 'none': 'none'};

    // --- pure helpers (tested with node) -----------------------------------------------------

    // 1331334404 -> "1.3B", 745225604 -> "745M": the size users compare models by.
    function formatParameters(count) {
        if (typeof count !== 'number' || !isFinite(count) || count <= 0) return '';
        if (count >= 1e9) return (count / 1e9).toFixed(1) + 'B';
        if (count >= 1e6) return Math.round(count / 1e6) + 'M';
        return String(Math.round(count));
    }

    // Only .safetensors files are inspected; a title is "name.safetensors [hash]" or the bare name.
    function isSafetensorsTitle(title) {
        return typeof title === 'string' && /\.safetensors(\s+\[[0-9a-f]+\])?$/i.test(title.trim());
    }

    function isHostModelError(error) {
        if (typeof error !== 'string' || error.indexOf(NOT_SDXL_PREFIX) === -1) return false;
        var kind = error.slice(error.indexOf(NOT_SDXL_PREFIX) + NOT_SDXL_PREFIX.length);
        return HOST_KINDS.some(function(hostKind) {
            return kind === hostKind || kind.indexOf(hostKind + ' (') === 0;
        });
    }

    // Route payload -> {text, tooltip, level: 'info' | 'warning'}, or null for "no badge".
    // Non-distilled models (SDXL, refiner, SD1.5) get nothing: the host handles them as usual
    // and a badge on every model would be noise.
    function badgeFor(payload) {
        if (!payload || typeof payload !== 'object') return null;
        if (payload.ok === false) {
            var error = typeof payload.error === 'string' && payload.error ? payload.error : 'unknown error';
            if (isHostModelError(error)) return null;
            return {text: '\u26a0 not loadable', tooltip: error, level: 'warning'};
        }
        if (payload.ok !== true || !payload.distilled) return null;

        var family = payload.family || 'distilled SDXL';
        var components = Array.isArray(payload.components) ? payload.components : [];
        var hasEncoders = TEXT_ENCODERS.every(function(name) {
            return components.indexOf(name) !== -1;
        });
        // Mirrors the extension's pre-flight: a single file with both encoders, or a diffusers
        // folder's UNet file (the folder supplies them), loads; a bare UNet does not.
        var folder = payload.form === 'diffusers-folder';
        if ((payload.form !== 'single-file' && !folder) || !hasEncoders) {
            return {
                text: '\u26a0 ' + family + ' \u00b7 UNet only',
                tooltip: family + " UNet without SDXL's text encoders: A1111 needs a single-file checkpoint. " +
                    'Convert it: python -m extensions_ssd1b convert <this file or its diffusers folder> ' +
                    '<output>.safetensors --components <an SDXL checkpoint>',
                level: 'warning',
            };
        }

        var size = formatParameters(payload.unet_parameters);
        var hasVae = components.indexOf('VAE') !== -1;
        var parts = [family];
        if (size) parts.push(size + ' UNet');
        if (!hasVae) parts.push('no VAE');

        var lines = [family + ': distilled SDXL UNet' +
            (size ? ', ' + payload.unet_parameters.toLocaleString('en-US') + ' parameters' : '') +
            (payload.middle ? ', middle block: ' + (MIDDLE_NAMES[payload.middle] || payload.middle) : '')];
        var where = folder ? 'In its diffusers folder: ' : 'In the file: ';
        lines.push(where + (components.length ? components.join(', ') : 'nothing recognised'));
        if (!hasVae) lines.push('No VAE in the file: choose an SDXL VAE in Settings \u2192 VAE \u2192 SD VAE.');
        return {text: parts.join(' \u00b7 '), tooltip: lines.join('\n'), level: 'info'};
    }

    // --- browser side ------------------------------------------------------------------------

    var cache = new Map(); // title -> payload of a 200 response (404s are not kept: the list may change)
    var cacheGeneration = 0; // bumped by the refresh button, so answers still in flight are not cached
    var badge = null; // the element, re-created if gradio ever re-renders the dropdown block
    var shownTitle = null; // title the badge currently describes
    var stale = false; // set by the refresh button: files may have changed under the same title
    var refreshRetries = 0; // a request racing the refresh's re-listing can get a 404: ask again
    var retryAt = 0; // after a network failure, ask again for the same title no sooner than this
    var timer = null;
    var requestSeq = 0;

    // The title the dropdown shows, or null while the user is typing a filter into it.
    function selectedTitle(block) {
        var input = block.querySelector('input');
        if (!input) return null;
        var root = input.getRootNode ? input.getRootNode() : document;
        if (document.activeElement === input || root.activeElement === input) return null;
        return input.value;
    }

    function ensureBadge(block) {
        var existing = block.querySelector('#' + BADGE_ID);
        if (existing) return existing;
        var created = document.createElement('span');
        created.id = BADGE_ID;
        created.className = 'ssd1b-badge';
        created.hidden = true;
        created.setAttribute('role', 'status');
        block.appendChild(created);
        // Selecting an option blurs the input; react then instead of waiting for a DOM-update burst.
        block.addEventListener('focusout', schedule);
        return created;
    }

    function render(spec) {
        if (!spec) {
            badge.hidden = true;
            badge.textContent = '';
            badge.removeAttribute('title');
            return;
        }
        badge.textContent = spec.text;
        badge.title = spec.tooltip;
        badge.classList.toggle('ssd1b-badge-warning', spec.level === 'warning');
        badge.hidden = false;
    }

    function fetchPayload(title) {
        var generation = cacheGeneration;
        return fetch(ROUTE + '?checkpoint=' + encodeURIComponent(title), {credentials: 'same-origin'})
            .then(function(response) {
                if (response.status === 404) return null; // not (or no longer) listed
                if (!response.ok) throw new Error('HTTP ' + response.status);
                return response.json().then(function(payload) {
                    if (generation === cacheGeneration) cache.set(title, payload);
                    return payload;
                });
            });
    }

    function update() {
        clearTimeout(timer);
        timer = null;
        var block = gradioApp().querySelector('#' + DROPDOWN_ID);
        if (!block) return;
        var title = selectedTitle(block);
        if (title === null) return;
        var element = ensureBadge(block);
        var retryDue = retryAt !== 0 && Date.now() >= retryAt;
        if (element === badge && title === shownTitle && !stale && !retryDue) return; // the common, cheap case
        badge = element;
        shownTitle = title;
        stale = false;
        retryAt = 0;
        var seq = ++requestSeq;

        if (!isSafetensorsTitle(title)) {
            render(null);
            return;
        }
        if (cache.has(title)) {
            render(badgeFor(cache.get(title)));
            return;
        }
        // Hide rather than keep describing the previous checkpoint while the request runs.
        render(null);
        fetchPayload(title).then(function(payload) {
            if (seq !== requestSeq) return;
            if (payload === null && refreshRetries > 0) {
                refreshRetries--;
                stale = true;
                setTimeout(schedule, 500);
            }
            render(badgeFor(payload));
        }).catch(function(error) {
            // A badge is not worth an error dialog: stay hidden, try again later or on the next change.
            console.debug('[SSD-1B] architecture badge: inspect request failed', error);
            if (seq === requestSeq) retryAt = Date.now() + RETRY_MS;
        });
    }

    function schedule() {
        clearTimeout(timer);
        timer = setTimeout(update, DEBOUNCE_MS);
    }

    function onRefreshClick(event) {
        var target = event.target;
        if (target && target.closest && target.closest('#' + REFRESH_ID)) {
            cache.clear();
            cacheGeneration++;
            stale = true;
            refreshRetries = 3;
            schedule();
        }
    }

    if (typeof onUiLoaded === 'function') {
        onUiLoaded(function() {
            // Delegated on the app root: the refresh button may be re-rendered by gradio.
            gradioApp().addEventListener('click', onRefreshClick, true);
            schedule();
            // Gradio sets the input's value as a property (page-load settings, a reverted failed
            // load), which no MutationObserver sees; a cheap string comparison catches it.
            setInterval(update, POLL_MS);
        });
        // Selections and refreshes re-render parts of the dropdown.
        onAfterUiUpdate(schedule);
        // Settings applied through the quicksettings or the Settings tab.
        onOptionsChanged(schedule);
    }

    if (typeof module !== 'undefined' && module.exports) {
        module.exports = {
            badgeFor: badgeFor,
            formatParameters: formatParameters,
            isSafetensorsTitle: isSafetensorsTitle,
            isHostModelError: isHostModelError,
            HOST_KINDS: HOST_KINDS,
            NOT_SDXL_PREFIX: NOT_SDXL_PREFIX,
        };
    }
})();
