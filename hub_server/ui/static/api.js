// Talking to the hub: JSON sections, operator actions, and the change feed.
// The bearer token (if any) lives in this tab's sessionStorage only and is sent
// as `Authorization: Bearer`, as gRPC callers send it in metadata.

const TOKEN_KEY = 'central-hub-token';

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.code || '';
    this.body = body;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra = {}) {
  const t = token();
  return t ? { ...extra, Authorization: `Bearer ${t}` } : extra;
}

async function answer(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

export async function get(section, params = {}) {
  const query = new URLSearchParams(
    Object.entries(params).filter(([, v]) => v !== '' && v !== undefined && v !== null),
  );
  const url = `/api/${section}${query.size ? `?${query}` : ''}`;
  return answer(await fetch(url, { headers: headers(), cache: 'no-store' }));
}

// `method` is "Service/Method" of aitrading.hub.v1; `request` its request
// message in proto3 JSON.
export async function act(method, request) {
  const response = await fetch(`/api/actions/${method}`, {
    method: 'POST',
    headers: headers({ 'Content-Type': 'application/json' }),
    body: JSON.stringify(request),
  });
  return answer(response);
}

// Server-Sent Events read through fetch, so the token travels in a header.
// Calls onChange(sections) per change message and onState('live' | 'down' |
// 'denied', detail); reconnects by itself until stop() is called.
export function follow(onChange, onState) {
  let stopped = false;
  let controller = null;

  async function once() {
    controller = new AbortController();
    const response = await fetch('/api/events', {
      headers: headers({ Accept: 'text/event-stream' }),
      signal: controller.signal,
      cache: 'no-store',
    });
    if (!response.ok) {
      const error = await answer(response).catch((e) => e);
      throw error;
    }
    onState('live');
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) event = line.slice(6).trim();
          else if (line.startsWith('data:')) data.push(line.slice(5).trim());
        }
        if (event === 'change' && data.length) onChange(JSON.parse(data.join('\n')));
        if (event === 'hello') onChange(null); // (re)connected: refresh everything
      }
    }
  }

  (async () => {
    while (!stopped) {
      try {
        await once();
        if (!stopped) onState('down', 'the hub closed the stream');
      } catch (e) {
        if (stopped) break;
        onState(e instanceof ApiError && (e.status === 401 || e.status === 403) ? 'denied' : 'down',
          e.message);
      }
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  })();

  return {
    stop() {
      stopped = true;
      controller?.abort();
    },
  };
}
