// Drives Bentley's @itwin/reality-capture client, as shipped, against the simulator: it creates
// Reality Modeling v2 jobs, follows one's progress to its end, lists jobs a page at a time and
// cancels one, then prints what the client got back as one JSON document.
//
//   node drive.mjs <dir holding node_modules/@itwin/reality-capture> <simulator URL> <iTwin id>
//
// The client names https://api.bentley.com/ itself and calls it through the global fetch; this
// script only wraps that fetch to send those requests to the simulator instead (the package is
// not changed). The client credentials come from SIMULATOR_CLIENT_ID / SIMULATOR_CLIENT_SECRET.
import { createRequire } from 'node:module';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const [toolsDir, simulator, iTwinId] = process.argv.slice(2);
if (!toolsDir || !simulator || !iTwinId) {
  console.error('usage: node drive.mjs <tools dir> <simulator URL> <iTwin id>');
  process.exit(2);
}
const require = createRequire(path.resolve(toolsDir, 'package.json'));
const { RealityCaptureService, Service, JobType } = require('@itwin/reality-capture');

const API = 'https://api.bentley.com/';
const sent = [];
const platformFetch = globalThis.fetch;
globalThis.fetch = (input, init) => {
  const url = String(input);
  sent.push(url);
  return platformFetch(url.startsWith(API) ? `${simulator}/${url.slice(API.length)}` : url, init);
};

async function accessToken() {
  const form = new URLSearchParams({
    grant_type: 'client_credentials',
    client_id: process.env.SIMULATOR_CLIENT_ID,
    client_secret: process.env.SIMULATOR_CLIENT_SECRET,
    scope: 'itwin-platform',
  });
  const answer = await platformFetch(`${simulator}/connect/token`, { method: 'POST', body: form });
  if (!answer.ok) throw new Error(`token endpoint answered ${answer.status}`);
  return `Bearer ${(await answer.json()).access_token}`;
}

const token = await accessToken();
const service = new RealityCaptureService({ getAccessToken: async () => token });

function value(response, what) {
  if (response.isError()) {
    throw new Error(`${what}: ${response.status_code} ${JSON.stringify(response.error)}`);
  }
  return response.value;
}

async function progressUntil(jobId, states, within = 15000) {
  const seen = [];
  const deadline = Date.now() + within;
  while (Date.now() < deadline) {
    const progress = value(await service.getJobProgress(jobId, Service.MODELING), 'progress');
    const last = seen.at(-1);
    if (!last || last.percentage !== progress.percentage || last.state !== progress.state) {
      seen.push(progress);
    }
    if (states.includes(progress.state)) return seen;
    await sleep(50);
  }
  throw new Error(`job ${jobId} did not reach ${states} (seen ${JSON.stringify(seen)})`);
}

const reconstruction = {
  type: JobType.RECONSTRUCTION,
  name: 'SDK reconstruction',
  iTwinId,
  specifications: {
    inputs: { scene: '1b1c8a2e-scene', regionOfInterest: 'bkt:roi.json' },
    outputs: { modelingReference: true, exports: [{ format: '3DTiles' }] },
    options: { tilingMode: 'Adaptive', geometricPrecision: 'High' },
  },
};
const tiling = {
  type: JobType.TILING,
  name: 'SDK tiling',
  iTwinId,
  specifications: { inputs: { scene: '1b1c8a2e-scene' }, outputs: ['modelingReference'] },
};

const created = [];
for (const job of [reconstruction, tiling, { ...tiling, name: 'SDK tiling 2' }]) {
  created.push(value(await service.submitJob(job), 'submitJob'));
}
const [finishing, cancelling] = created;
// Followed from its creation while the rest goes on, as an application would.
const following = progressUntil(finishing.id, ['Success', 'Failed']);

const filter = `iTwinId eq ${iTwinId}`;
const pages = [];
let continuationToken = '';
do {
  const page = value(await service.getJobs(Service.MODELING, filter, 2, continuationToken), 'getJobs');
  pages.push({ ids: page.jobs.map((job) => job.id), next: page._links?.next?.href ?? null });
  continuationToken = page._links ? new URL(page._links.next.href).searchParams.get('continuationToken') : '';
} while (continuationToken);

const cancel = value(await service.cancelJob(cancelling.id, Service.MODELING), 'cancelJob');
const cancelled = await progressUntil(cancelling.id, ['Cancelled']);
const progress = await following;
const finished = value(await service.getJob(finishing.id, Service.MODELING), 'getJob');
const messages = value(await service.getJobMessages(finishing.id, Service.MODELING), 'messages');
const unknown = await service.getJob('00000000-0000-4000-8000-000000000000', Service.MODELING);
const again = await service.cancelJob(cancelling.id, Service.MODELING);
const bucket = value(await service.getBucket(iTwinId), 'getBucket');
const files = value(await service.getServiceFiles(), 'getServiceFiles');

console.log(JSON.stringify({
  created,
  pages,
  cancel,
  cancelled,
  progress,
  finished,
  messages,
  unknown: { status: unknown.status_code, error: unknown.error },
  cancelAgain: { status: again.status_code, error: again.error },
  bucket,
  files,
  sent,
}));
