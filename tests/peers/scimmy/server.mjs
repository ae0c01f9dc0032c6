// A downstream SCIM server for the outbound tests: SCIMMY (npm) behind its Express routers, with
// users and groups kept in memory. Usage: node server.mjs PORT TOKEN (listens on 127.0.0.1 only).
// Like many real applications it refuses a second user with the same userName (409 uniqueness)
// and answers filters itself (SCIMMY's Filter over the stored resources).
import {randomUUID} from "node:crypto";
import express from "express";
import SCIMMY from "scimmy";
import SCIMMYRouters from "scimmy-routers";

const [port, token] = process.argv.slice(2);
if (!port || !token) {
    console.error("usage: node server.mjs PORT TOKEN");
    process.exit(2);
}

// One in-memory table per resource type: ingress writes, egress reads (filtered), degress deletes.
function table(kind, unique) {
    const rows = new Map();
    return {
        ingress: (resource, instance) => {
            const id = resource.id ?? randomUUID();
            if (resource.id && !rows.has(id)) throw new SCIMMY.Types.Error(404, null, `${kind} ${id} not found`);
            const clash = [...rows.values()].find((r) => r.id !== id
                && String(r[unique]).toLowerCase() === String(instance[unique]).toLowerCase());
            if (clash) throw new SCIMMY.Types.Error(409, "uniqueness", `${unique} ${instance[unique]} is taken`);
            const now = new Date().toISOString();
            const created = rows.get(id)?.meta?.created ?? now;
            const row = {...JSON.parse(JSON.stringify(instance)), id, meta: {created, lastModified: now}};
            rows.set(id, row);
            return row;
        },
        egress: (resource) => {
            if (resource.id) {
                const row = rows.get(resource.id);
                if (!row) throw new SCIMMY.Types.Error(404, null, `${kind} ${resource.id} not found`);
                return row;
            }
            const all = [...rows.values()];
            return resource.filter ? resource.filter.match(all) : all;
        },
        degress: (resource) => {
            if (!rows.delete(resource.id)) throw new SCIMMY.Types.Error(404, null, `${kind} ${resource.id} not found`);
        },
    };
}

SCIMMY.Resources.declare(SCIMMY.Resources.User, table("User", "userName"));
SCIMMY.Resources.declare(SCIMMY.Resources.Group, table("Group", "displayName"));

const app = express();
app.use("/scim/v2", new SCIMMYRouters({
    type: "bearer",
    handler: (request) => {
        if (request.header("Authorization") !== `Bearer ${token}`) throw new Error("the bearer token is not valid");
        return "scimlog-tests";
    },
}));
app.listen(Number(port), "127.0.0.1", () => console.log(`scimmy on 127.0.0.1:${port}`));
