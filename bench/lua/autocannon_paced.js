// Fixed offered load with autocannon, evenly spaced (a Node script, next to the wrk one).
//
//   node bench/lua/autocannon_paced.js AUTOCANNON_DIR RECORDS.jsonl ORIGIN RATE DURATION_S
//
// autocannon's own rate limit (-R / overallRate) lets each connection send its quota for
// the second back to back at the top of every second and then pause: bursts of RATE
// requests, not RATE requests a second. Here RATE single-connection autocannon instances
// each send 1 request a second (connectionRate 1), started 1/RATE s apart, so a request
// leaves every 1/RATE s and none waits for another (open loop as long as every answer
// takes less than a second).
//
// RECORDS.jsonl: one {"method", "path", "headers", "body"} per line (bench/_load.py,
// write_paced_records), each sent once, in order, across all instances; running out
// starts over and is reported ("wrapped").
//
// Latency: every response time from autocannon's 'response' events (ms, sub-millisecond
// resolution; autocannon's own histogram keeps whole milliseconds). Prints one line
// "BENCH_JSON {...}".

'use strict'

const fs = require('fs')

const [moduleDir, recordsPath, origin, rateArg, durationArg] = process.argv.slice(2)
const autocannon = require(moduleDir)
const rate = parseInt(rateArg, 10)
const duration = parseFloat(durationArg)
const records = fs.readFileSync(recordsPath, 'utf8').split('\n').filter(Boolean).map((line) => JSON.parse(line))

let issued = 0
let wrapped = false
const times = []
let non2xx = 0
let errors = 0
let all2xx = 0 // every 2xx answer, ramp-up included (the store check counts them all)
const statuses = {}

function nextRecord (req) {
  const record = records[issued % records.length]
  issued += 1
  if (issued > records.length) wrapped = true
  return { ...req, method: record.method, path: record.path, headers: record.headers, body: record.body }
}

// Creating an instance takes about 2 ms of this process's time, more than the 1/RATE s
// between two slots at 500/s: the instances are created over PASSES seconds, pass j
// creating every PASSES-th one at its own phase of the second, so the phases stay exactly
// 1/RATE s apart. Only requests sent after the last pass plus WARMUP s (and before the end)
// count; every instance stops at the same moment.
const PASSES = Math.max(1, Math.ceil(rate / 125))
const WARMUP = 1
const measureFrom = (PASSES + WARMUP) * 1000 // ms after the first instance
const measureTo = measureFrom + duration * 1000
let began = 0n

function sinceBegan () {
  return Number(process.hrtime.bigint() - began) / 1e6
}

function start (i) {
  const pass = i % PASSES
  const at = pass * 1000 + (i * 1000) / rate
  return new Promise((resolve, reject) => {
    setTimeout(() => {
      const runFor = (measureTo - sinceBegan()) / 1000 + 0.2
      const instance = autocannon({
        url: origin,
        connections: 1,
        connectionRate: 1,
        duration: runFor,
        timeout: 10,
        requests: [{ setupRequest: nextRecord }]
      }, (err, result) => (err ? reject(err) : resolve(result)))
      instance.on('response', (client, statusCode, resBytes, responseTime) => {
        if (statusCode >= 200 && statusCode < 300) all2xx += 1
        const sentAt = sinceBegan() - responseTime
        if (sentAt < measureFrom || sentAt >= measureTo) return
        times.push(responseTime)
        statuses[statusCode] = (statuses[statusCode] || 0) + 1
        if (statusCode < 200 || statusCode >= 300) non2xx += 1
      })
      instance.on('reqError', () => { errors += 1 })
    }, at)
  })
}

function percentile (sorted, p) {
  if (sorted.length === 0) return 0
  const index = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)
  return sorted[Math.max(0, index)]
}

async function main () {
  began = process.hrtime.bigint()
  const instances = []
  for (let i = 0; i < rate; i++) instances.push(start(i))
  await Promise.all(instances)
  const sorted = times.slice().sort((a, b) => a - b)
  const mean = sorted.reduce((a, b) => a + b, 0) / Math.max(1, sorted.length)
  const latency = {
    mean,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    'p99.9': percentile(sorted, 99.9),
    max: sorted.length ? sorted[sorted.length - 1] : 0
  }
  const summary = {
    responses: times.length,
    duration_s: duration,
    ramp_s: PASSES + WARMUP,
    non_2xx: non2xx,
    errors,
    issued,
    all_2xx: all2xx,
    wrapped,
    statuses,
    latency_ms: latency
  }
  process.stdout.write('BENCH_JSON ' + JSON.stringify(summary) + '\n')
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
